package client

import (
	"time"

	"github.com/databus-go/databus/checkpoint"
	"github.com/databus-go/databus/event"
	"github.com/databus-go/databus/schema"
)

// Window is one committed source transaction: the events of it that passed
// the client's filters, in the source's order. Windows reach the handler in
// strictly increasing SCN order.
type Window struct {
	SCN       uint64
	Timestamp time.Time // commit time at the source, in UTC
	TxID      string    // source transaction id (a GTID for MySQL/MariaDB), may be empty
	Events    []*Event

	// Changes are the schema changes and DDL signals inside the window, in
	// stream order, each placed among Events. Their versions are already in
	// the client's registry. A consumer that materialises rows must apply a
	// Truncate or Drop change at its place: the source's log carries no row
	// events for it.
	Changes []Change
	// Snapshot marks a page of a bootstrap snapshot rather than a source
	// transaction: its events are inserts of rows as they are at the
	// snapshot's start SCN (SCN), each with the SCN of the row's last change,
	// and it has no TxID and no Changes. See BootstrapHandler.
	Snapshot bool

	// seq orders snapshot pages for the dispatcher (1, 2, ...), as SCNs
	// order other windows.
	seq uint64
	// cp is the checkpoint after the window, when it is not the online one
	// at SCN (bootstrap phases).
	cp checkpoint.Checkpoint
	// frames are the window's bytes on the wire (nil for snapshot pages).
	frames []byte
}

func (w *Window) order() uint64 {
	if w.Snapshot {
		return w.seq
	}
	return w.SCN
}

// Frames returns the window's frames as the relay sent them (after its
// filters), end-of-window frame last; see package event for their format.
// The slice aliases the response the window came in: it must not be
// modified, and it may be kept.
func (w *Window) Frames() []byte { return w.frames }

// Event is one row change. Its byte slices are never reused by the client:
// a handler may keep them after its call returns. They share memory with
// the other events of the same relay response, so an application that keeps
// a few events for a long time should copy them to let the rest go.
type Event struct {
	SCN           uint64 // the SCN of the event's window
	Source        string // logical source name, db.table
	SourceID      uint32
	SchemaVersion uint16
	Op            event.Op
	Timestamp     time.Time // commit time at the source, in UTC
	// Key is the encoded primary key (see KeyValues).
	Key []byte
	// Payload is the Avro binary of the row after the change (insert,
	// update); empty for a delete.
	Payload []byte
	// Before is the Avro binary of the row before the change (update,
	// delete), when the source provides it; HasBefore tells an absent image
	// from an empty one.
	Before    []byte
	HasBefore bool

	// entry is the schema version the event was written with.
	// Invariant: entry.ID == SourceID && entry.Version == SchemaVersion.
	entry *schema.Entry
}

// Table returns the schema version the event was written with.
func (e *Event) Table() schema.Table { return e.entry.Table }

// Schema returns the registry entry (table version and codec) the event was
// written with. It is shared and immutable.
func (e *Event) Schema() *schema.Entry { return e.entry }

// Row decodes the row image after the change into a map keyed by Avro
// field name (see schema.FieldName), with the exact schema version the event
// was written with. A delete has no such image: Row returns ErrNoImage.
func (e *Event) Row() (map[string]any, error) {
	if e.Op == event.OpDelete {
		return nil, ErrNoImage
	}
	return e.entry.Codec.Decode(e.Payload)
}

// BeforeRow decodes the row image before the change, or returns ErrNoImage
// when the source gave none.
func (e *Event) BeforeRow() (map[string]any, error) {
	if !e.HasBefore {
		return nil, ErrNoImage
	}
	return e.entry.Codec.Decode(e.Before)
}

// Decode decodes the row image after the change into v, a pointer to a
// struct whose fields carry `avro:"field"` tags; nullable columns need
// pointer fields. A delete has no such image: Decode returns ErrNoImage.
func (e *Event) Decode(v any) error {
	if e.Op == event.OpDelete {
		return ErrNoImage
	}
	return e.entry.Codec.DecodeInto(e.Payload, v)
}

// DecodeBefore is Decode for the row image before the change.
func (e *Event) DecodeBefore(v any) error {
	if !e.HasBefore {
		return ErrNoImage
	}
	return e.entry.Codec.DecodeInto(e.Before, v)
}

// KeyValues returns the primary key's components, in key-column order, as
// nil, int64, uint64, string or []byte values (see event.DecodeKey).
func (e *Event) KeyValues() ([]any, error) { return event.DecodeKey(e.Key) }

// Change is a schema change or DDL signal inside a window.
type Change struct {
	// At places the change: it happened after Events[:At] and before
	// Events[At:].
	At int
	// Table is the schema version in force after the change.
	Table schema.Table
	// DDL is "alter", "rename", "truncate" or "drop" for changes that stand
	// for a statement, "" for a new version announced before its first row.
	DDL string
	// Truncate: every row of Table's source was deleted here.
	Truncate bool
	// Drop: the table was dropped here; its rows are gone.
	Drop bool
	// RenamedFrom / RenamedTo name the other side of a rename.
	RenamedFrom, RenamedTo string
}
