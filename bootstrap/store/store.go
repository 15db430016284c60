// Package store defines the bootstrap service's durable store: a log of
// every relay window and a snapshot holding the latest row per key, kept in
// one transactional database so that both always describe the same point of
// the stream.
//
// Two implementations exist: package sqlitestore (the default: one file, no
// server) and package pgstore (several bootstrap servers sharing one
// PostgreSQL database). Both pass the conformance suite in package
// storetest, which is the executable form of the contract written here.
//
// # Data model
//
// The log is one entry per window, keyed by SCN: the window's frames exactly
// as the producer committed them (relay frames, plus seeded rows before the
// end-of-window frame). The snapshot is one row per (source id, encoded
// key): the newest version of the row as an insert frame, or a tombstone
// when its newest change was a delete (or a TRUNCATE/DROP of its table).
// Every snapshot row carries the SCN of the window that last changed it.
//
// # Consistency
//
// Apply commits a batch of whole windows in one transaction: log entries,
// snapshot changes, schema versions, seed progress and the new head SCN
// become visible together or not at all. Readers see only committed batches.
//
// A bootstrap takes a snapshot "at" S, the head when it started: Snapshot
// returns the live rows whose SCN is <= S. A row changed after S is left
// out, because its change is in the log after S; a row whose SCN is <= S
// has not changed since S, so its newest version is its version as of S.
// Replaying the log after S over those rows therefore yields exactly the
// source's tables as of any later log SCN, whatever happened while the
// snapshot was being read.
package store

import (
	"context"
	"errors"
	"fmt"
	"math"
	"time"

	"github.com/databus-go/databus/event"
	"github.com/databus-go/databus/filter"
	"github.com/databus-go/databus/schema"
)

// Store is the bootstrap store. Implementations are safe for concurrent
// use: one producer calls Apply while any number of readers page through
// Snapshot and Log.
type Store interface {
	// State returns the store's identity and the bounds of its log.
	State(ctx context.Context) (State, error)

	// Apply commits b atomically (see Batch). It fails with ErrConflict,
	// changing nothing, when b.After is not the current head: another
	// producer has written since this one read the head.
	Apply(ctx context.Context, b *Batch) error

	// Snapshot returns one page of the snapshot at q.AsOf: live rows
	// (not tombstones) with SCN <= q.AsOf that pass q.Filter, in (source,
	// key) order, after q.After. The order is stable: paging with each
	// page's Next visits every such row that is unchanged during the paging
	// exactly once.
	Snapshot(ctx context.Context, q SnapshotQuery) (SnapshotPage, error)

	// Log returns the log windows with SCN in (q.After, q.UpTo], oldest
	// first, whole, with data frames that fail q.Filter removed (end of
	// window and schema-change frames always pass). It fails with
	// *NotHeldError when q.After < State.LowWatermark: windows after it
	// have been purged, or were never stored.
	Log(ctx context.Context, q LogQuery) (LogPage, error)

	// Schemas returns every schema version ever added, ordered by source
	// id, then version.
	Schemas(ctx context.Context) ([]schema.Table, error)

	// Seeds returns the progress of every seed run recorded, by table name.
	Seeds(ctx context.Context) ([]SeedProgress, error)

	// CountRows returns the number of live rows with SCN <= asOf that pass
	// f: the size of a snapshot, for progress reports. It may be slow on a
	// large store; callers call it once per bootstrap.
	CountRows(ctx context.Context, asOf uint64, f *filter.Filter) (uint64, error)

	// Purge deletes log windows with a commit timestamp before p.LogBefore
	// (raising LowWatermark to the newest one deleted; the head window is
	// never deleted) and tombstones whose SCN is that of a window committed
	// before p.TombstonesBefore. A zero time purges nothing of that kind.
	Purge(ctx context.Context, p PurgePolicy) (PurgeResult, error)

	// Close releases the store's resources. In-flight calls may fail.
	Close() error
}

// State describes a store.
type State struct {
	// ID identifies the store; it is chosen when the store is created and
	// never changes. Checkpoints of a bootstrap carry it, so that a server
	// can refuse a checkpoint made against another store.
	ID string
	// Head is the SCN of the last window applied, or the starting point of
	// the first batch when no window has been applied yet; HeadTime is its
	// commit timestamp (ns since the epoch, 0 when unknown).
	Head     uint64
	HeadTime int64
	// Empty is true until the first Apply.
	Empty bool
	// LowWatermark is the smallest checkpoint SCN the log can serve: every
	// window with SCN > LowWatermark and <= Head is in the log. It starts
	// at the first batch's After and rises as Purge deletes windows.
	LowWatermark uint64
	// Windows is the number of log entries held.
	Windows uint64
}

// Batch is what Apply commits: consecutive windows and the metadata that
// must become durable with them.
type Batch struct {
	// After is the head the producer read before this batch (State.Head);
	// on an empty store it is the SCN the producer started after, which
	// becomes the LowWatermark.
	After uint64
	// Windows, in strictly increasing SCN order, all > After. May be empty
	// (a batch of schemas or seed progress only).
	Windows []Window
	// Schemas are schema versions to record; versions already held are
	// ignored.
	Schemas []schema.Table
	// Seeds are seed progress records to upsert, by Table.
	Seeds []SeedProgress
}

// Window is one window as the log and the snapshot receive it.
type Window struct {
	SCN       uint64
	Timestamp int64 // commit time, ns since the epoch
	// Frames are the window's encoded frames, end-of-window frame last.
	// The log stores them verbatim; the store does not parse them except to
	// filter in Log.
	Frames []byte
	// Rows are the snapshot changes the window makes, in stream order. A
	// later change of the same (Source, Key) supersedes an earlier one; a
	// Truncate change supersedes every earlier row of its source.
	Rows []Row
}

// Row is one change of the snapshot.
type Row struct {
	Source uint32
	// Key is the encoded primary key (package event). Nil for Truncate.
	Key []byte
	// SCN is the window that made the change.
	SCN uint64
	// Op says what the change is.
	Op RowOp
	// Frame is the row's newest version as a whole data frame (kind data,
	// op insert, no before-image, the given SCN): what Snapshot serves.
	// Set for RowUpsert only.
	Frame []byte
}

// RowOp is the kind of a snapshot change.
type RowOp uint8

const (
	// RowUpsert stores Frame as the row's newest version.
	RowUpsert RowOp = iota + 1
	// RowDelete turns the row into a tombstone at SCN (also when the store
	// does not hold it: a tombstone records the delete).
	RowDelete
	// RowTruncate turns every live row of Source into a tombstone at SCN
	// (TRUNCATE or DROP of the table). Key and Frame are unset.
	RowTruncate
)

// SeedProgress is the durable progress of one seed run of one table.
type SeedProgress struct {
	Table string // logical source name, db.table
	// Run identifies the seed run; a new run of the same table replaces
	// the record.
	Run string
	// Cursor is the adapter's keyset cursor after the last chunk applied
	// ("" before the first): a restarted run continues after it.
	Cursor  string
	Rows    uint64 // rows applied so far
	Done    bool
	Started time.Time
	Updated time.Time
}

// SnapshotQuery asks for one page of a snapshot.
type SnapshotQuery struct {
	// AsOf is the snapshot's SCN: rows with SCN > AsOf are left out.
	AsOf uint64
	// After is the cursor of the last row of the previous page; nil starts
	// from the first row.
	After *Cursor
	// Filter, when not nil, keeps only the rows it matches (sources and key
	// partition). Implementations push what they can into their queries.
	Filter *filter.Filter
	// MaxRows (> 0) and MaxBytes (> 0) bound the page; a page holds at
	// least one row when any remains, even if it exceeds MaxBytes.
	MaxRows  int
	MaxBytes int
	// Dst, if not nil, is reused for the page's frames.
	Dst []byte
}

// Cursor is a position in the snapshot's (source, key) order.
type Cursor struct {
	Source uint32
	Key    []byte
}

// SnapshotPage is one page of a snapshot.
type SnapshotPage struct {
	// Frames are the rows' frames, concatenated, in cursor order.
	Frames []byte
	Rows   int
	// Next is the cursor of the page's last row; nil when the snapshot has
	// no row after this page (the page may still hold rows).
	Next *Cursor
}

// LogQuery asks for log windows.
type LogQuery struct {
	After uint64 // the last window the reader has
	UpTo  uint64 // the last window wanted (inclusive)
	// Filter, when not nil, keeps only the data frames it matches.
	Filter *filter.Filter
	// MaxBytes (> 0) bounds the page; a page holds at least one window when
	// any is in range, whatever its size.
	MaxBytes int
	// Dst, if not nil, is reused for the page's frames.
	Dst []byte
}

// LogPage is a run of whole windows from the log.
type LogPage struct {
	Frames  []byte // whole windows, filtered, oldest first
	Windows int
	// Last is the SCN of the last window in Frames, or LogQuery.After when
	// the page is empty.
	Last uint64
}

// PurgePolicy says what Purge deletes.
type PurgePolicy struct {
	LogBefore        time.Time
	TombstonesBefore time.Time
}

// PurgeResult counts what Purge deleted.
type PurgeResult struct {
	Windows, Tombstones uint64
	LowWatermark        uint64 // after the purge
}

// ErrConflict is returned by Apply when the batch does not follow the head.
var ErrConflict = errors.New("databus: bootstrap store head moved: another producer is writing")

// NotHeldError is returned by Log when the windows after a checkpoint are
// no longer (or were never) in the log.
type NotHeldError struct {
	After        uint64 // the SCN asked for
	LowWatermark uint64 // the smallest SCN the log can serve
}

func (e *NotHeldError) Error() string {
	return fmt.Sprintf("databus: bootstrap log does not hold the windows after scn %d (it serves checkpoints from scn %d)", e.After, e.LowWatermark)
}

// KeyColumns returns what a store indexes of an encoded key for filter
// push-down. ikey is the key's value when it is a single integer that fits
// an int64 (what RANGE partitions compare; event.KeyInt). modHash is a value
// with event.KeyBucket(key, n) == modHash % n for every n > 0, when it fits
// an int64 (not for an integer key of magnitude >= 2^63). Stores keep both
// as nullable columns and still check each row with the filter itself, so
// the push-down only has to be a superset.
func KeyColumns(key []byte) (ikey int64, hasInt bool, modHash int64, hasMod bool) {
	ikey, hasInt = event.KeyInt(key)
	m := event.KeyModBase(key)
	if m > math.MaxInt64 {
		return ikey, hasInt, 0, false
	}
	return ikey, hasInt, int64(m), true
}
