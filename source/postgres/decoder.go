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
	xid      uint32
	streamed bool
	skip     bool // already emitted (a re-sent transaction): not decoded
	// events are, for a plain transaction, its events since its last
	// chunk; a streamed transaction's go to spill as they are decoded.
	events []event.Event
	// chunked: chunks of this (plain) transaction were emitted.
	chunked bool
	// ann places the schema-change events of a plain transaction, chunk
	// after chunk; its commit LSN is known from its Begin.
	ann announcer
	// rels holds the relation messages sent inside a streamed transaction:
	// they describe its rows only (pgoutput tracks them per streamed
	// transaction).
	rels  map[uint32]*relation
	arena arena
	// spill holds a streamed transaction's events, each with the
	// (sub)transaction id it belongs to, so that a subtransaction's abort
	// can drop them; nil until its first captured change.
	spill *spillFile
}

// eventOverhead approximates the memory of one pending event besides its
// bytes in the arena: the event.Event itself and its share of the slice.
const eventOverhead = 128

// pending is the memory the transaction's pending events take.
func (t *txn) pending() int64 { return t.arena.held + eventOverhead*int64(len(t.events)) }

// arenaChunk is the largest buffer an arena allocates for small slices,
// and the largest it keeps for reuse.
const arenaChunk = 64 << 10

// arena hands out the byte slices of a transaction's keys and images,
// carved from shared buffers to save allocations. A buffer stays alive
// while any slice of it does (a window's events): an arena is never shared
// by two transactions. reset reuses the buffers, once the events carved
// from them were emitted as a chunk (the relay copies a chunk's events
// before emit returns).
type arena struct {
	bufs [][]byte // bufs[cur] is being filled; those after it are empty
	cur  int
	held int64 // bytes handed out since the last reset
}

// alloc returns n bytes of the arena.
func (a *arena) alloc(n int) []byte {
	if n == 0 {
		return nil
	}
	for a.cur < len(a.bufs) {
		b := a.bufs[a.cur]
		if l := len(b); cap(b)-l >= n {
			a.bufs[a.cur] = b[:l+n]
			a.held += int64(n)
			return b[l : l+n : l+n]
		}
		if a.cur == len(a.bufs)-1 {
			break
		}
		a.cur++
	}
	// Buffers grow with the transaction: a one-row transaction takes a
	// few hundred bytes, a large one 64 KiB buffers.
	size := 256
	if k := len(a.bufs); k > 0 {
		size = min(2*cap(a.bufs[k-1]), arenaChunk)
	}
	b := make([]byte, n, max(size, n))
	a.bufs = append(a.bufs, b)
	a.cur = len(a.bufs) - 1
	a.held += int64(n)
	return b[:n:n]
}

func (a *arena) copy(b []byte) []byte {
	if len(b) == 0 {
		return nil
	}
	d := a.alloc(len(b))
	copy(d, b)
	return d
}

// reset makes the arena's memory available again. Slices handed out before
// must no longer be used.
func (a *arena) reset() {
	keep := a.bufs[:0]
	for _, b := range a.bufs {
		if cap(b) <= arenaChunk {
			keep = append(keep, b[:0])
		}
	}
	clear(a.bufs[len(keep):])
	a.bufs, a.cur, a.held = keep, 0, 0
}

// abandoned is the chunk that discards the chunks of a transaction that
// will not be emitted whole (see package source).
var abandoned = source.Window{Partial: true, Abandon: true}

// decoder turns pgoutput messages into windows. It is a state machine fed
// one message at a time by the capture loop; its outside dependencies are
// the resolver (relation definitions to schema versions), the schema store
// (where schema changes fall) and the spill files of streamed
// transactions. It is not safe for concurrent use.
type decoder struct {
	store    *schemaStore
	resolver relationResolver
	captured map[string]bool
	proto    int
	spill    *spiller
	// chunkBytes and chunkEvents are the pending size (see txn.pending)
	// and number of events past which the events of a transaction not
	// yet emitted go out as a chunk; 0 means no bound.
	chunkBytes  int64
	chunkEvents int

	// last is the SCN of the newest window produced (or the run's start
	// position): every window has a greater SCN, and transactions that end
	// at or before it are skipped. Invariant: non-decreasing.
	last   uint64
	lastTS int64
	// chunked: chunks were emitted since the last whole or final window.
	// Invariant: only while a plain transaction is open or a streamed
	// one's commit is being replayed.
	chunked bool

	rels      map[uint32]*relation // relation messages outside streamed transactions
	tx        *txn                 // the open plain transaction
	streams   map[uint32]*txn      // open streamed transactions by top-level xid
	replaying *txn                 // the streamed transaction being emitted at its commit
	inStream  bool
	streamXid uint32

	buf       []byte // image scratch
	unchanged []int  // unchanged columns scratch
}

func newDecoder(store *schemaStore, resolver relationResolver, tables []string, proto int, from uint64, spill *spiller, chunkBytes int64, chunkEvents int) *decoder {
	d := &decoder{store: store, resolver: resolver, captured: map[string]bool{}, proto: proto, last: from,
		spill: spill, chunkBytes: chunkBytes, chunkEvents: chunkEvents}
	for _, t := range tables {
		d.captured[t] = true
	}
	// The seed's watermark tables travel with the data (see "Seeding" in
	// the package doc).
	for _, t := range watermarkTables(tables) {
		d.captured[t] = true
	}
	d.forget()
	return d
}

// reset prepares a new replication session, which sends every relation
// again and re-sends transactions from their start: chunks of a
// transaction cut short are abandoned (with emit), and the open
// transactions, their spill files included, forgotten.
func (d *decoder) reset(emit func(*source.Window) error) error {
	d.forget()
	if d.chunked {
		d.chunked = false
		w := abandoned
		return emit(&w)
	}
	return nil
}

// forget drops the session state.
func (d *decoder) forget() {
	for _, tx := range d.streams {
		d.spill.remove(tx.spill)
	}
	d.rels = map[uint32]*relation{}
	d.tx = nil
	d.streams = map[uint32]*txn{}
	d.inStream = false
}

// close removes the spill files of the open transactions.
func (d *decoder) close() { d.forget() }

// held is the number of key and image bytes of open transactions in
// memory, and spilled those on disk.
func (d *decoder) held() (held, spilled int64) {
	if d.tx != nil {
		held += d.tx.pending()
	}
	if d.replaying != nil {
		held += d.replaying.pending()
	}
	for _, t := range d.streams {
		if t.spill != nil {
			spilled += t.spill.size
		}
	}
	return held, spilled
}

// open is the number of open transactions (plain and streamed).
func (d *decoder) open() int {
	n := len(d.streams)
	if d.tx != nil {
		n++
	}
	return n
}

func decodeErr(format string, args ...any) error {
	return fmt.Errorf("%w: "+format, append([]any{ErrDecode}, args...)...)
}

// handle decodes one pgoutput message and passes what it completes to emit:
// a window, or a chunk of a transaction (source.Window.Partial). emit's
// errors are returned as they are.
func (d *decoder) handle(ctx context.Context, data []byte, emit func(*source.Window) error) error {
	if len(data) == 0 {
		return decodeErr("empty message")
	}
	var msg pglogrepl.Message
	var err error
	if d.proto >= 2 {
		msg, err = pglogrepl.ParseV2(data, d.inStream)
	} else {
		msg, err = pglogrepl.Parse(data)
	}
	if err != nil {
		return decodeErr("pgoutput message %q: %v", data[0], err)
	}
	switch m := msg.(type) {
	case *pglogrepl.BeginMessage:
		if d.tx != nil || d.inStream {
			return decodeErr("BEGIN of xid %d inside another transaction", m.Xid)
		}
		// A commit record that starts before the last window's end is
		// that window's or an earlier one's: already emitted.
		at := uint64(m.FinalLSN)
		d.tx = &txn{xid: m.Xid, skip: at < d.last, ann: announcer{store: d.store, at: at}}
		return nil
	case *pglogrepl.CommitMessage:
		tx := d.tx
		d.tx = nil
		if tx == nil {
			return decodeErr("COMMIT outside a transaction")
		}
		return d.commit(tx, uint64(m.CommitLSN), uint64(m.TransactionEndLSN), m.CommitTime, emit)
	case *pglogrepl.RelationMessageV2:
		return d.relation(ctx, &m.RelationMessage)
	case *pglogrepl.RelationMessage:
		return d.relation(ctx, m)
	case *pglogrepl.InsertMessageV2:
		return d.change(m.Xid, m.RelationID, event.OpInsert, 0, nil, m.Tuple, emit)
	case *pglogrepl.InsertMessage:
		return d.change(0, m.RelationID, event.OpInsert, 0, nil, m.Tuple, emit)
	case *pglogrepl.UpdateMessageV2:
		return d.change(m.Xid, m.RelationID, event.OpUpdate, m.OldTupleType, m.OldTuple, m.NewTuple, emit)
	case *pglogrepl.UpdateMessage:
		return d.change(0, m.RelationID, event.OpUpdate, m.OldTupleType, m.OldTuple, m.NewTuple, emit)
	case *pglogrepl.DeleteMessageV2:
		return d.change(m.Xid, m.RelationID, event.OpDelete, m.OldTupleType, m.OldTuple, nil, emit)
	case *pglogrepl.DeleteMessage:
		return d.change(0, m.RelationID, event.OpDelete, m.OldTupleType, m.OldTuple, nil, emit)
	case *pglogrepl.TruncateMessageV2:
		return d.truncate(m.Xid, &m.TruncateMessage, emit)
	case *pglogrepl.TruncateMessage:
		return d.truncate(0, m, emit)
	case *pglogrepl.LogicalDecodingMessageV2:
		return d.message(&m.LogicalDecodingMessage, emit)
	case *pglogrepl.LogicalDecodingMessage:
		return d.message(m, emit)
	case *pglogrepl.StreamStartMessageV2:
		if d.inStream || d.tx != nil {
			return decodeErr("STREAM START of xid %d inside another transaction", m.Xid)
		}
		d.inStream, d.streamXid = true, m.Xid
		if tx := d.streams[m.Xid]; tx == nil || m.FirstSegment == 1 {
			if tx != nil {
				d.spill.remove(tx.spill)
			}
			d.streams[m.Xid] = &txn{xid: m.Xid, streamed: true, rels: map[uint32]*relation{}}
		}
		return nil
	case *pglogrepl.StreamStopMessageV2:
		d.inStream = false
		// The block is over: what the shared buffer holds goes to its
		// file, so that only one block's tail is ever in memory.
		return d.spill.flush()
	case *pglogrepl.StreamAbortMessageV2:
		return d.abort(m.Xid, m.SubXid)
	case *pglogrepl.StreamCommitMessageV2:
		tx := d.streams[m.Xid]
		delete(d.streams, m.Xid)
		if tx == nil {
			if uint64(m.TransactionEndLSN) <= d.last {
				return nil
			}
			return decodeErr("STREAM COMMIT of xid %d, whose changes were never streamed", m.Xid)
		}
		defer d.spill.remove(tx.spill)
		return d.commitStreamed(tx, uint64(m.CommitLSN), uint64(m.TransactionEndLSN), m.CommitTime, emit)
	}
	// Type and Origin messages: types are looked up by OID when needed.
	return nil
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
		if r.types, r.fields, r.key, err = rowEncoding(t); err != nil {
			return decodeErr("%v", err)
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
		b = schema.AppendLong(b, int64(len(unchanged)))
		for _, i := range unchanged {
			b = schema.AppendBytes(b, []byte(r.fields[i]))
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

func (d *decoder) change(xid uint32, relid uint32, op event.Op, oldType uint8, old, tup *pglogrepl.TupleData, emit func(*source.Window) error) error {
	tx, err := d.current()
	if err != nil || tx.skip {
		return err
	}
	r, err := d.lookup(tx, relid)
	if err != nil || !r.captured {
		return err
	}
	if err := d.chunk(tx, emit); err != nil {
		return err
	}
	if tx.streamed {
		// The change's events are in the spill file once it returns.
		defer tx.arena.reset()
	}
	for _, t := range []*pglogrepl.TupleData{old, tup} {
		if t != nil && len(t.Columns) != len(r.types) {
			return decodeErr("%s: tuple of %d columns for a relation of %d", r.name, len(t.Columns), len(r.types))
		}
	}
	ev := event.Event{Kind: event.KindData, Op: op, Source: r.table.ID, SchemaVersion: r.table.Version}
	add := func(e event.Event) error { return d.add(tx, xid, e) }
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
		return add(ev)
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
		return add(ev)
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
				if err := add(del); err != nil {
					return err
				}
				if b, err = d.image(r, tup, fill); err != nil {
					return err
				}
				ins := ev
				ins.Op, ins.Key, ins.Payload = event.OpInsert, newKey, tx.arena.copy(b)
				return add(ins)
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
		return add(ev)
	}
	return nil
}

// add appends e, an event of (sub)transaction xid, to tx: to its pending
// events, or to its spill file when it is streamed.
func (d *decoder) add(tx *txn, xid uint32, e event.Event) error {
	if tx.streamed {
		return d.spill.write(&tx.spill, tx.xid, xid, &e)
	}
	tx.events = append(tx.events, e)
	return nil
}

// chunk emits the pending events of a plain transaction as a chunk once
// they take chunkBytes or number chunkEvents, and then reuses their memory.
// It is called before a change is added, so that the final window is
// never empty, and a chunk always ends after a whole change (the delete
// and insert of a key change travel together).
func (d *decoder) chunk(tx *txn, emit func(*source.Window) error) error {
	if tx.streamed || !d.full(tx) {
		return nil
	}
	events, err := tx.ann.announce(tx.events)
	if err != nil {
		return err
	}
	w := source.Window{Partial: true, Events: events}
	if err := emit(&w); err != nil {
		return err
	}
	d.chunked, tx.chunked = true, true
	// The relay has copied the chunk: its events and arena are reused.
	clear(tx.events)
	tx.events = tx.events[:0]
	tx.arena.reset()
	return nil
}

// full reports whether tx's pending events make a chunk.
func (d *decoder) full(tx *txn) bool {
	return len(tx.events) > 0 && (d.chunkBytes > 0 && tx.pending() >= d.chunkBytes || d.chunkEvents > 0 && len(tx.events) >= d.chunkEvents)
}

func (d *decoder) truncate(xid uint32, m *pglogrepl.TruncateMessage, emit func(*source.Window) error) error {
	tx, err := d.current()
	if err != nil || tx.skip {
		return err
	}
	if err := d.chunk(tx, emit); err != nil {
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
		sc := schema.ChangeOf(r.table)
		sc.DDL, sc.Truncate = "truncate", true
		sc.Cascade = m.Option&pglogrepl.TruncateOptionCascade != 0
		sc.RestartIdentity = m.Option&pglogrepl.TruncateOptionRestartIdentity != 0
		p, err := json.Marshal(sc)
		if err != nil {
			return err
		}
		if err := d.add(tx, xid, event.Event{Kind: event.KindSchemaChange, Source: r.table.ID, SchemaVersion: r.table.Version, Payload: p}); err != nil {
			return err
		}
	}
	return nil
}

// abort drops a streamed transaction, or one subtransaction's events.
func (d *decoder) abort(xid, subxid uint32) error {
	tx := d.streams[xid]
	if tx == nil {
		return nil
	}
	if subxid == xid || subxid == 0 {
		delete(d.streams, xid)
		d.spill.remove(tx.spill)
		return nil
	}
	if tx.spill == nil {
		return nil
	}
	return d.spill.abort(tx.spill, subxid)
}

// message turns a non-transactional "databus" message (a heartbeat) into an
// empty window at its LSN.
func (d *decoder) message(m *pglogrepl.LogicalDecodingMessage, emit func(*source.Window) error) error {
	lsn := uint64(m.LSN)
	// pgoutput sends a plain transaction in one piece, at its commit: no
	// message can fall between its Begin and Commit (the d.tx test is a
	// safeguard of the chunk contract).
	if m.Transactional || m.Prefix != heartbeatPrefix || lsn <= d.last || d.tx != nil {
		return nil
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
	return emit(&source.Window{SCN: lsn, Timestamp: ts, Position: source.Position{SCN: lsn}})
}

// commit closes a plain transaction: its window, or its final chunk, goes to
// emit; nothing for a transaction already emitted or without captured
// changes.
func (d *decoder) commit(tx *txn, commitLSN, end uint64, at time.Time, emit func(*source.Window) error) error {
	if tx.skip || end <= d.last {
		if tx.chunked {
			// Not reachable: skip is decided at Begin, before any chunk,
			// and the commit ends after its Begin's final LSN.
			d.chunked = false
			w := abandoned
			return emit(&w)
		}
		return nil
	}
	if len(tx.events) == 0 && !tx.chunked {
		return nil
	}
	if tx.ann.at != commitLSN {
		return decodeErr("transaction %d began with commit LSN %s and committed at %s", tx.xid, lsnString(tx.ann.at), lsnString(commitLSN))
	}
	return d.finish(tx.xid, &tx.ann, tx.events, end, at, emit)
}

// commitStreamed closes a streamed transaction: its spilled events are read
// back, those of rolled-back subtransactions left out, and go to emit as
// chunks of bounded size and a final window, or as one window when they
// fit in a chunk. The caller removes the spill file.
func (d *decoder) commitStreamed(tx *txn, commitLSN, end uint64, at time.Time, emit func(*source.Window) error) error {
	if end <= d.last || tx.spill == nil {
		return nil
	}
	// A fresh arena and slice: the final window's events keep them.
	rt := &txn{xid: tx.xid, ann: announcer{store: d.store, at: commitLSN}}
	d.replaying = rt
	defer func() { d.replaying = nil }()
	err := d.spill.replay(tx.spill, &rt.arena, func() error { return d.chunk(rt, emit) }, func(e event.Event) error {
		rt.events = append(rt.events, e)
		return nil
	})
	if err != nil {
		return err
	}
	if len(rt.events) == 0 && !rt.chunked {
		return nil
	}
	return d.finish(tx.xid, &rt.ann, rt.events, end, at, emit)
}

// finish emits the last events of a transaction as its window (the final
// chunk, when chunks of it were emitted), after recording where its schema
// changes fell.
func (d *decoder) finish(xid uint32, ann *announcer, events []event.Event, end uint64, at time.Time, emit func(*source.Window) error) error {
	events, err := ann.announce(events)
	if err != nil {
		return err
	}
	if len(ann.trans) > 0 {
		if err := d.store.recordCommit(ann.at, ann.trans); err != nil {
			return err
		}
	}
	ts := at.UnixNano()
	for i := range events {
		events[i].SCN, events[i].Timestamp = end, ts
	}
	d.last, d.lastTS, d.chunked = end, ts, false
	return emit(&source.Window{
		SCN:       end,
		Timestamp: ts,
		TxID:      strconv.FormatUint(uint64(xid), 10),
		Events:    events,
		Position:  source.Position{SCN: end},
	})
}

// announcer inserts a schema-change event before every event that uses a
// version of its table other than the one the table's previous event used,
// the previous event of a transaction's first use being the recorded
// transition before it (commit order). It follows one transaction, chunk
// after chunk, and collects its transitions, which depend only on the log
// and on the recorded history: re-reading the log puts schema changes in
// the same windows, before the same events.
type announcer struct {
	store *schemaStore
	at    uint64 // the transaction's commit LSN
	cur   []inForce
	trans []idVersion
}

// inForce is the version a table's rows use at a point of a transaction.
type inForce struct {
	id uint32
	v  uint16
	ok bool
}

// announce returns events with the schema-change events they need; events
// itself when they need none.
func (a *announcer) announce(events []event.Event) ([]event.Event, error) {
	var out []event.Event
	for i := range events {
		e := &events[i]
		j := -1
		for k := range a.cur { // tables seen in this transaction; few
			if a.cur[k].id == e.Source {
				j = k
				break
			}
		}
		if j < 0 {
			v, ok := a.store.versionBefore(e.Source, a.at)
			a.cur = append(a.cur, inForce{e.Source, v, ok})
			j = len(a.cur) - 1
		}
		if a.cur[j].ok && a.cur[j].v == e.SchemaVersion {
			if out != nil {
				out = append(out, *e)
			}
			continue
		}
		if out == nil {
			out = make([]event.Event, 0, len(events)+1)
			out = append(out, events[:i]...)
		}
		t, ok := a.store.table(e.Source, e.SchemaVersion)
		if !ok {
			return nil, fmt.Errorf("%w: version %d of source %d is not in the history", errStore, e.SchemaVersion, e.Source)
		}
		sc, err := event.NewSchemaChange(0, 0, schema.ChangeOf(t))
		if err != nil {
			return nil, err
		}
		out = append(out, sc, *e)
		a.cur[j] = inForce{e.Source, e.SchemaVersion, true}
		a.trans = append(a.trans, idVersion{e.Source, e.SchemaVersion})
	}
	if out == nil {
		return events, nil
	}
	return out, nil
}
