// Package source defines the contract between a physical source adapter
// (source/sqlite, source/mysql, source/postgres) and the relay.
//
// # Durability by retention
//
// The relay keeps its event buffer in memory. What makes it survive kill -9
// is that the source's own log still holds every window in the buffer: the
// relay calls Release only for windows it has evicted, and persists that
// release position before calling it. After a restart, the relay runs the
// source again from the persisted release position and rebuilds the same
// windows with the same SCNs, so a consumer resumes without a gap and
// without a repeated SCN. An adapter therefore must:
//
//  1. derive window boundaries and SCNs only from the source's log, so that
//     running from the same position twice yields the same windows;
//  2. keep (or keep the server from purging) everything after the last
//     released position: SQLite keeps change-log rows, PostgreSQL confirms
//     the slot's flush LSN only up to it.
package source

import (
	"context"
	"encoding/json"

	"github.com/databus-go/databus/event"
	"github.com/databus-go/databus/schema"
)

// Position is where a source resumes: the SCN of the last window before it
// and the adapter's own position data (binlog file and offset, LSN, ...).
// The zero Position means "from the oldest change the source still has".
type Position struct {
	SCN  uint64          `json:"scn"`
	Data json.RawMessage `json:"data,omitempty"`
}

// Window is one committed unit of the source's log.
//
// Invariants: SCN is strictly greater than the SCN of the previous window
// the adapter emitted; every event has its SCN field set to SCN; events are
// in the source's order; a schema-change event precedes the first data event
// that uses the version it announces. A window with no events is a
// heartbeat.
type Window struct {
	SCN       uint64
	Timestamp int64  // commit time, ns since the Unix epoch
	TxID      string // source transaction id (a GTID), may be empty
	Events    []event.Event
	// Position is the position after this window; running from it yields
	// the windows that follow.
	Position Position
}

// Source is a physical source adapter. Its methods are called by one relay
// goroutine at a time, except Release, which may be called concurrently
// with Run.
type Source interface {
	// Open connects, checks the source's settings (refusing with an error
	// that names the setting to change) and returns the current schema of
	// every captured table.
	Open(ctx context.Context) ([]schema.Table, error)
	// Run captures committed changes after from and calls emit for each
	// window, in SCN order. emit may block, which is how the relay pushes
	// back. Run returns when ctx is done (with ctx's error), when emit fails
	// (with that error) or on an error it cannot recover from.
	Run(ctx context.Context, from Position, emit func(context.Context, *Window) error) error
	// Release tells the adapter that the relay no longer needs the windows
	// up to and including pos; the adapter may prune or confirm them.
	Release(ctx context.Context, pos Position) error
	// Close releases the adapter's resources.
	Close() error
}
