package postgres

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pglogrepl"

	"github.com/databus-go/databus/event"
	"github.com/databus-go/databus/schema"
	"github.com/databus-go/databus/source"
)

// heartbeatPrefix is the prefix of the logical decoding messages that
// become empty windows.
const heartbeatPrefix = "databus"

// relationResolver turns a relation message's definition into a schema
// version: the catalog and the schema store behind an interface, so that
// the decoder itself does no I/O of its own.
type relationResolver interface {
	resolveRelation(ctx context.Context, m *pglogrepl.RelationMessage) (schema.Table, error)
}

// relation is one relation message's definition, resolved.
type relation struct {
	captured bool
	name     string
	table    schema.Table // with id and version
	types    []colType    // per column of the relation message
	fields   []string     // Avro field name per column
	key      []int        // key column indexes, in key order
}

// txn is a transaction being decoded: a plain one between Begin and Commit,
// or a streamed one from its first Stream Start to its Stream Commit.
type txn struct {
	xid    uint32
	skip   bool // already emitted (a re-sent transaction): not decoded
	events []event.Event
	// subxids holds, for a streamed transaction, the (sub)transaction id of
	// each event, so that a subtransaction's abort can drop its events.
	subxids []uint32
	// rels holds the relation messages sent inside a streamed transaction:
	// they describe its rows only (pgoutput tracks them per streamed
	// transaction).
	rels  map[uint32]*relation
	arena arena
}

// arena hands out the byte slices of a transaction's keys and images,
// carved from shared chunks to save allocations. A chunk stays alive while
// any slice of it does (the window's events): its tail is never reused by
// another transaction.
type arena struct {
	chunk []byte
	held  int64 // bytes handed out
}

func (a *arena) copy(b []byte) []byte {
	if len(b) == 0 {
		return nil
	}
	if cap(a.chunk)-len(a.chunk) < len(b) {
		// Chunks grow with the transaction: a one-row transaction takes
		// a few hundred bytes, a large one 64 KiB chunks.
		a.chunk = make([]byte, 0, max(min(2*cap(a.chunk), 64<<10), 256, len(b)))
	}
	start := len(a.chunk)
	a.chunk = append(a.chunk, b...)
	a.held += int64(len(b))
	return a.chunk[start:len(a.chunk):len(a.chunk)]
}

// decoder turns pgoutput messages into windows. It is a state machine fed
// one message at a time by the capture loop; its only outside dependencies
// are the resolver (relation definitions to schema versions) and the schema
// store (where schema changes fall). It is not safe for concurrent use.
type decoder struct {
	store    *schemaStore
	resolver relationResolver
	captured map[string]bool
	proto    int

	// last is the SCN of the newest window produced (or the run's start
	// position): every window has a greater SCN, and transactions that end
	// at or before it are skipped. Invariant: non-decreasing.
	last   uint64
	lastTS int64

	rels      map[uint32]*relation // relation messages outside streamed transactions
	tx        *txn                 // the open plain transaction
	streams   map[uint32]*txn      // open streamed transactions by top-level xid
	inStream  bool
	streamXid uint32

	buf       []byte // image scratch
	unchanged []int  // unchanged columns scratch
}

func newDecoder(store *schemaStore, resolver relationResolver, tables []string, proto int, from uint64) *decoder {
	d := &decoder{store: store, resolver: resolver, captured: map[string]bool{}, proto: proto, last: from}
	for _, t := range tables {
		d.captured[t] = true
	}
	d.reset()
	return d
}

// reset forgets the session state: a new replication session sends every
// relation again and re-sends transactions from their start.
func (d *decoder) reset() {
	d.rels = map[uint32]*relation{}
	d.tx = nil
	d.streams = map[uint32]*txn{}
	d.inStream = false
}

// held is the number of key and image bytes of open transactions.
func (d *decoder) held() int64 {
	var n int64
	if d.tx != nil {
		n += d.tx.arena.held
	}
	for _, t := range d.streams {
		n += t.arena.held
	}
	return n
}

func decodeErr(format string, args ...any) error {
	return fmt.Errorf("%w: "+format, append([]any{ErrDecode}, args...)...)
}

// handle decodes one pgoutput message and returns the window it completes,
// if any.
func (d *decoder) handle(ctx context.Context, data []byte) (*source.Window, error) {
	if len(data) == 0 {
		return nil, decodeErr("empty message")
	}
	var msg pglogrepl.Message
	var err error
	if d.proto >= 2 {
		msg, err = pglogrepl.ParseV2(data, d.inStream)
	} else {
		msg, err = pglogrepl.Parse(data)
	}
	if err != nil {
		return nil, decodeErr("pgoutput message %q: %v", data[0], err)
	}
	switch m := msg.(type) {
	case *pglogrepl.BeginMessage:
		if d.tx != nil || d.inStream {
			return nil, decodeErr("BEGIN of xid %d inside another transaction", m.Xid)
		}
		// A commit record that starts before the last window's end is
		// that window's or an earlier one's: already emitted.
		d.tx = &txn{xid: m.Xid, skip: uint64(m.FinalLSN) < d.last}
		return nil, nil
	case *pglogrepl.CommitMessage:
		tx := d.tx
		d.tx = nil
		if tx == nil {
			return nil, decodeErr("COMMIT outside a transaction")
		}
		return d.commit(tx, uint64(m.CommitLSN), uint64(m.TransactionEndLSN), m.CommitTime)
	case *pglogrepl.RelationMessageV2:
		return nil, d.relation(ctx, &m.RelationMessage)
	case *pglogrepl.RelationMessage:
		return nil, d.relation(ctx, m)
	case *pglogrepl.InsertMessageV2:
		return nil, d.change(m.Xid, m.RelationID, event.OpInsert, 0, nil, m.Tuple)
	case *pglogrepl.InsertMessage:
		return nil, d.change(0, m.RelationID, event.OpInsert, 0, nil, m.Tuple)
	case *pglogrepl.UpdateMessageV2:
		return nil, d.change(m.Xid, m.RelationID, event.OpUpdate, m.OldTupleType, m.OldTuple, m.NewTuple)
	case *pglogrepl.UpdateMessage:
		return nil, d.change(0, m.RelationID, event.OpUpdate, m.OldTupleType, m.OldTuple, m.NewTuple)
	case *pglogrepl.DeleteMessageV2:
		return nil, d.change(m.Xid, m.RelationID, event.OpDelete, m.OldTupleType, m.OldTuple, nil)
	case *pglogrepl.DeleteMessage:
		return nil, d.change(0, m.RelationID, event.OpDelete, m.OldTupleType, m.OldTuple, nil)
	case *pglogrepl.TruncateMessageV2:
		return nil, d.truncate(m.Xid, &m.TruncateMessage)
	case *pglogrepl.TruncateMessage:
		return nil, d.truncate(0, m)
	case *pglogrepl.LogicalDecodingMessageV2:
		return d.message(&m.LogicalDecodingMessage)
	case *pglogrepl.LogicalDecodingMessage:
		return d.message(m)
	case *pglogrepl.StreamStartMessageV2:
		if d.inStream || d.tx != nil {
			return nil, decodeErr("STREAM START of xid %d inside another transaction", m.Xid)
		}
		d.inStream, d.streamXid = true, m.Xid
		if tx := d.streams[m.Xid]; tx == nil || m.FirstSegment == 1 {
			d.streams[m.Xid] = &txn{xid: m.Xid, rels: map[uint32]*relation{}}
		}
		return nil, nil
	case *pglogrepl.StreamStopMessageV2:
		d.inStream = false
		return nil, nil
	case *pglogrepl.StreamAbortMessageV2:
		d.abort(m.Xid, m.SubXid)
		return nil, nil
	case *pglogrepl.StreamCommitMessageV2:
		tx := d.streams[m.Xid]
		delete(d.streams, m.Xid)
		if tx == nil {
			if uint64(m.TransactionEndLSN) <= d.last {
				return nil, nil
			}
			return nil, decodeErr("STREAM COMMIT of xid %d, whose changes were never streamed", m.Xid)
		}
		return d.commit(tx, uint64(m.CommitLSN), uint64(m.TransactionEndLSN), m.CommitTime)
	}
	// Type and Origin messages: types are looked up by OID when needed.
	return nil, nil
}

// current is the transaction a change belongs to.
func (d *decoder) current() (*txn, error) {
	if d.inStream {
		tx := d.streams[d.streamXid]
		if tx == nil {
			return nil, decodeErr("change in an unknown stream %d", d.streamXid)
		}
		return tx, nil
	}
	if d.tx == nil {
		return nil, decodeErr("change outside a transaction")
	}
	return d.tx, nil
}

func (d *decoder) lookup(tx *txn, relid uint32) (*relation, error) {
	if tx.rels != nil {
		if r := tx.rels[relid]; r != nil {
			return r, nil
		}
	}
	if r := d.rels[relid]; r != nil {
		return r, nil
	}
	return nil, decodeErr("change of relation %d before its relation message", relid)
}

func (d *decoder) relation(ctx context.Context, m *pglogrepl.RelationMessage) error {
	name := m.Namespace + "." + m.RelationName
	r := &relation{name: name}
	if d.captured[name] {
		t, err := d.resolver.resolveRelation(ctx, m)
		if err != nil {
			return err
		}
		r.captured, r.table = true, t
		if len(t.Columns) != len(m.Columns)+1 {
			return decodeErr("%s: relation message with %d columns resolved to a schema of %d", name, len(m.Columns), len(t.Columns))
		}
		r.types = make([]colType, len(m.Columns))
		r.fields = make([]string, len(m.Columns))
		for i := range m.Columns {
			c := t.Columns[i]
			ct, ok := typeByAvro[string(c.Avro)]
			if !ok {
				return decodeErr("%s: column %s has Avro type %s, which the adapter does not decode", name, c.Name, c.Avro)
			}
			r.types[i], r.fields[i] = ct, schema.FieldName(c.Name)
		}
		for _, k := range t.Key {
			r.key = append(r.key, t.Column(k))
		}
	}
	if d.inStream {
		if tx := d.streams[d.streamXid]; tx != nil {
			tx.rels[m.RelationID] = r
			return nil
		}
	}
	d.rels[m.RelationID] = r
	return nil
}

// column returns the value of column i of tup, taking it from fill when tup
// does not carry it (an unchanged TOASTed value) and fill does.
func column(tup, fill *pglogrepl.TupleData, i int) *pglogrepl.TupleDataColumn {
	c := tup.Columns[i]
	if c.DataType == pglogrepl.TupleDataTypeToast && fill != nil && fill.Columns[i].DataType == pglogrepl.TupleDataTypeText {
		return fill.Columns[i]
	}
	return c
}

// image encodes tup as the Avro record of r's schema: null for NULL and
// for values the tuple does not carry, whose field names go into the
// UnchangedColumn array.
func (d *decoder) image(r *relation, tup, fill *pglogrepl.TupleData) ([]byte, error) {
	b := d.buf[:0]
	unchanged := d.unchanged[:0]
	var err error
	for i := range r.types {
		c := column(tup, fill, i)
		switch c.DataType {
		case pglogrepl.TupleDataTypeNull:
			b = append(b, unionNull)
		case pglogrepl.TupleDataTypeToast:
			b = append(b, unionNull)
			unchanged = append(unchanged, i)
		case pglogrepl.TupleDataTypeText:
			b = append(b, unionValue)
			if b, err = appendValue(b, r.types[i], c.Data); err != nil {
				return nil, decodeErr("%s column %s: %v", r.name, r.fields[i], err)
			}
		default:
			return nil, decodeErr("%s column %s: tuple data of type %q", r.name, r.fields[i], c.DataType)
		}
	}
	if len(unchanged) > 0 {
		b = appendLong(b, int64(len(unchanged)))
		for _, i := range unchanged {
			b = appendAvroString(b, []byte(r.fields[i]))
		}
	}
	b = append(b, 0)
	d.buf, d.unchanged = b, unchanged
	return b, nil
}

// key encodes the key of tup.
func (d *decoder) key(r *relation, tup, fill *pglogrepl.TupleData) ([]byte, error) {
	var k []byte
	var err error
	for _, i := range r.key {
		c := column(tup, fill, i)
		switch c.DataType {
		case pglogrepl.TupleDataTypeNull, pglogrepl.TupleDataTypeText:
			if k, err = appendKey(k, r.types[i], c.Data, c.DataType == pglogrepl.TupleDataTypeNull); err != nil {
				return nil, decodeErr("%s key column %s: %v", r.name, r.fields[i], err)
			}
		default:
			return nil, decodeErr("%s key column %s is not in the tuple (type %q)", r.name, r.fields[i], c.DataType)
		}
	}
	return k, nil
}

func (d *decoder) change(xid uint32, relid uint32, op event.Op, oldType uint8, old, tup *pglogrepl.TupleData) error {
	tx, err := d.current()
	if err != nil || tx.skip {
		return err
	}
	r, err := d.lookup(tx, relid)
	if err != nil || !r.captured {
		return err
	}
	for _, t := range []*pglogrepl.TupleData{old, tup} {
		if t != nil && len(t.Columns) != len(r.types) {
			return decodeErr("%s: tuple of %d columns for a relation of %d", r.name, len(t.Columns), len(r.types))
		}
	}
	ev := event.Event{Kind: event.KindData, Op: op, Source: r.table.ID, SchemaVersion: r.table.Version}
	add := func(e event.Event) {
		tx.events = append(tx.events, e)
		if tx.rels != nil {
			tx.subxids = append(tx.subxids, xid)
		}
	}
	switch op {
	case event.OpInsert:
		if ev.Key, err = d.key(r, tup, nil); err != nil {
			return err
		}
		ev.Key = tx.arena.copy(ev.Key)
		b, err := d.image(r, tup, nil)
		if err != nil {
			return err
		}
		ev.Payload = tx.arena.copy(b)
		add(ev)
	case event.OpDelete:
		if old == nil {
			return decodeErr("%s: DELETE without an old tuple", r.name)
		}
		if ev.Key, err = d.key(r, old, nil); err != nil {
			return err
		}
		ev.Key = tx.arena.copy(ev.Key)
		b, err := d.image(r, old, nil)
		if err != nil {
			return err
		}
		ev.Before, ev.HasBefore = tx.arena.copy(b), true
		add(ev)
	case event.OpUpdate:
		full := oldType == pglogrepl.UpdateMessageTupleTypeOld
		var fill *pglogrepl.TupleData
		if full {
			fill = old // REPLICA IDENTITY FULL: the old row has the values the new one omits
		}
		newKey, err := d.key(r, tup, old)
		if err != nil {
			return err
		}
		newKey = tx.arena.copy(newKey)
		if old != nil {
			oldKey, err := d.key(r, old, nil)
			if err != nil {
				return err
			}
			if !bytes.Equal(oldKey, newKey) {
				// The key changed: a delete of the old key and an insert of
				// the new one, so that consumers keyed by the key stay right.
				b, err := d.image(r, old, nil)
				if err != nil {
					return err
				}
				del := ev
				del.Op, del.Key, del.Before, del.HasBefore = event.OpDelete, tx.arena.copy(oldKey), tx.arena.copy(b), true
				add(del)
				if b, err = d.image(r, tup, fill); err != nil {
					return err
				}
				ins := ev
				ins.Op, ins.Key, ins.Payload = event.OpInsert, newKey, tx.arena.copy(b)
				add(ins)
				return nil
			}
		}
		b, err := d.image(r, tup, fill)
		if err != nil {
			return err
		}
		ev.Key, ev.Payload = newKey, tx.arena.copy(b)
		if full {
			if b, err = d.image(r, old, nil); err != nil {
				return err
			}
			ev.Before, ev.HasBefore = tx.arena.copy(b), true
		}
		add(ev)
	}
	return nil
}

// ddlChange is the payload of the schema-change events the adapter emits
// for statements the log carries no rows for: the event.SchemaChange of
// the version in force plus what happened. Readers that decode it as an
// event.SchemaChange ignore the extra fields. The layout matches the MySQL
// adapter's.
type ddlChange struct {
	event.SchemaChange
	// DDL is "truncate".
	DDL string `json:"ddl"`
	// Truncate: every row of the source was deleted (TRUNCATE); the log
	// carries no row events for it, so consumers must drop the rows they
	// hold for this source.
	Truncate bool `json:"truncate,omitempty"`
	// Cascade and RestartIdentity echo the TRUNCATE's options.
	Cascade         bool `json:"cascade,omitempty"`
	RestartIdentity bool `json:"restartIdentity,omitempty"`
}

func schemaChange(t schema.Table) event.SchemaChange {
	return event.SchemaChange{Source: t.ID, Name: t.Name, Version: t.Version, Key: t.Key, Avro: t.AvroSchema()}
}

func (d *decoder) truncate(xid uint32, m *pglogrepl.TruncateMessage) error {
	tx, err := d.current()
	if err != nil || tx.skip {
		return err
	}
	for _, relid := range m.RelationIDs {
		r, err := d.lookup(tx, relid)
		if err != nil {
			return err
		}
		if !r.captured {
			continue
		}
		p, err := json.Marshal(ddlChange{
			SchemaChange:    schemaChange(r.table),
			DDL:             "truncate",
			Truncate:        true,
			Cascade:         m.Option&pglogrepl.TruncateOptionCascade != 0,
			RestartIdentity: m.Option&pglogrepl.TruncateOptionRestartIdentity != 0,
		})
		if err != nil {
			return err
		}
		tx.events = append(tx.events, event.Event{Kind: event.KindSchemaChange, Source: r.table.ID, SchemaVersion: r.table.Version, Payload: p})
		if tx.rels != nil {
			tx.subxids = append(tx.subxids, xid)
		}
	}
	return nil
}

// abort drops a streamed transaction, or one subtransaction's events.
func (d *decoder) abort(xid, subxid uint32) {
	tx := d.streams[xid]
	if tx == nil {
		return
	}
	if subxid == xid || subxid == 0 {
		delete(d.streams, xid)
		return
	}
	keep := 0
	for i := range tx.events {
		if tx.subxids[i] != subxid {
			tx.events[keep], tx.subxids[keep] = tx.events[i], tx.subxids[i]
			keep++
		}
	}
	clear(tx.events[keep:])
	tx.events, tx.subxids = tx.events[:keep], tx.subxids[:keep]
}

// message turns a non-transactional "databus" message (a heartbeat) into an
// empty window at its LSN.
func (d *decoder) message(m *pglogrepl.LogicalDecodingMessage) (*source.Window, error) {
	lsn := uint64(m.LSN)
	if m.Transactional || m.Prefix != heartbeatPrefix || lsn <= d.last {
		return nil, nil
	}
	ts := d.lastTS
	// "heartbeat <µs since the epoch>", written by the server's clock: a
	// deterministic timestamp for the window.
	if rest, ok := strings.CutPrefix(string(m.Content), "heartbeat "); ok {
		if us, err := strconv.ParseInt(rest, 10, 64); err == nil {
			ts = us * 1000
		}
	}
	d.last, d.lastTS = lsn, ts
	return &source.Window{SCN: lsn, Timestamp: ts, Position: source.Position{SCN: lsn}}, nil
}

// commit closes a transaction: it decides where schema-change events fall
// (see announce), records that decision, and returns the window, or nil for
// a transaction already emitted or without captured changes.
func (d *decoder) commit(tx *txn, commitLSN, end uint64, at time.Time) (*source.Window, error) {
	if tx.skip || end <= d.last || len(tx.events) == 0 {
		return nil, nil
	}
	events, trans, err := d.announce(tx.events, commitLSN)
	if err != nil {
		return nil, err
	}
	if len(trans) > 0 {
		if err := d.store.recordCommit(commitLSN, trans); err != nil {
			return nil, err
		}
	}
	ts := at.UnixNano()
	for i := range events {
		events[i].SCN, events[i].Timestamp = end, ts
	}
	d.last, d.lastTS = end, ts
	return &source.Window{
		SCN:       end,
		Timestamp: ts,
		TxID:      strconv.FormatUint(uint64(tx.xid), 10),
		Events:    events,
		Position:  source.Position{SCN: end},
	}, nil
}

// announce inserts a schema-change event before every event that uses a
// version of its table other than the one the table's previous event used,
// the previous event of a transaction's first use being the recorded
// transition before it (commit order). It returns the transitions of this
// transaction, which depend only on the log and on the recorded history:
// re-reading the log puts schema changes in the same windows.
func (d *decoder) announce(events []event.Event, at uint64) ([]event.Event, []idVersion, error) {
	type inForce struct {
		id uint32
		v  uint16
		ok bool
	}
	var cur []inForce // tables seen in this transaction; few
	var trans []idVersion
	var out []event.Event
	for i := range events {
		e := &events[i]
		j := -1
		for k := range cur {
			if cur[k].id == e.Source {
				j = k
				break
			}
		}
		if j < 0 {
			v, ok := d.store.versionBefore(e.Source, at)
			cur = append(cur, inForce{e.Source, v, ok})
			j = len(cur) - 1
		}
		if cur[j].ok && cur[j].v == e.SchemaVersion {
			if out != nil {
				out = append(out, *e)
			}
			continue
		}
		if out == nil {
			out = make([]event.Event, 0, len(events)+1)
			out = append(out, events[:i]...)
		}
		t, ok := d.store.table(e.Source, e.SchemaVersion)
		if !ok {
			return nil, nil, fmt.Errorf("%w: version %d of source %d is not in the history", errStore, e.SchemaVersion, e.Source)
		}
		sc, err := event.NewSchemaChange(0, 0, schemaChange(t))
		if err != nil {
			return nil, nil, err
		}
		out = append(out, sc, *e)
		cur[j] = inForce{e.Source, e.SchemaVersion, true}
		trans = append(trans, idVersion{e.Source, e.SchemaVersion})
	}
	if out == nil {
		return events, nil, nil
	}
	return out, trans, nil
}
