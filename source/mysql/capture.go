package mysql

import (
	"encoding/hex"
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/go-mysql-org/go-mysql/replication"

	"github.com/databus-go/databus/event"
	"github.com/databus-go/databus/schema"
	"github.com/databus-go/databus/source"
)

type tableMap = *replication.TableMapEvent

// capture turns binlog events into windows. It is the adapter's core: no
// network, no goroutines; the only clock it reads is now, for the
// timestamps of heartbeat windows on an idle server. It is used by one
// goroutine.
//
// Windows and their SCNs are a function of the log alone (and of the
// persisted schema history, which only grows): running it over the same
// events from the same position yields the same data windows. Empty
// windows are the exception: which skipped transactions get one depends on
// where the run started and on when the server was idle.
type capture struct {
	tables *tableCache
	store  *schemaStore
	filter *filter
	// heartbeat is the least time between two empty windows (ns).
	heartbeat int64
	now       func() time.Time
	// chunkBytes and chunkEvents are the pending size (see txn.pending)
	// and number of events past which the events of a transaction still
	// open are emitted as a chunk (source.Window.Partial); 0 means no bound.
	chunkBytes, chunkEvents int

	file    string // current binlog file
	fileNum uint32

	// last is the last window emitted. Invariant: every window emitted
	// next has an SCN above last.scn.
	last struct {
		scn uint64
		ts  int64
		pos posData
	}
	lastGTID string // GTID of the last transaction read, emitted or not

	// cur is the schema version each source's rows last used in this run.
	// A transaction using the same version needs no schema-change event
	// (the history has a transition at or before it with that version), so
	// the store is asked only when the version differs.
	cur map[uint32]uint16

	// arenaHint sizes the next transaction's arena: the last one's size.
	arenaHint int

	tx txn
}

// txn is the transaction being read.
type txn struct {
	open    bool
	inBegin bool // after BEGIN / XA START: statements do not commit
	// gtidFlags is set for MariaDB GTID events, whose FL_STANDALONE flag
	// says whether the group ends with its (single) statement.
	gtidFlags  bool
	standalone bool
	gtid       string
	at         uint64 // log position of the group's first event
	touched    bool   // rows or DDL of a captured table
	// chunked: chunks of this transaction's events have been emitted; the
	// events below are those read since the last chunk.
	chunked bool
	events  []event.Event
	arena   []byte // backing store of the events' keys and images
}

// eventOverhead approximates the memory of one pending event besides its
// bytes in the arena: the event.Event itself and its share of the slice.
const eventOverhead = 128

// pending is the memory the transaction's pending events take.
func (t *txn) pending() int { return len(t.arena) + eventOverhead*len(t.events) }

// abandoned is the chunk that discards the chunks of a transaction that
// will not be emitted whole (see package source).
var abandoned = source.Window{Partial: true, Abandon: true}

func newCapture(tables *tableCache, store *schemaStore, f *filter, heartbeat time.Duration, chunkBytes, chunkEvents int, now func() time.Time) *capture {
	return &capture{tables: tables, store: store, filter: f, heartbeat: int64(heartbeat), chunkBytes: chunkBytes, chunkEvents: chunkEvents, now: now, cur: map[uint32]uint16{}}
}

// reset forgets the transaction in progress, for a reconnection that
// resumes at the last window's position: chunks of it already emitted are
// abandoned, since the transaction will be read again from its start.
func (c *capture) reset(emit func(*source.Window) error) error {
	chunked := c.tx.chunked
	c.tx = txn{}
	c.lastGTID = c.last.pos.GTID
	// The transaction cut short may have moved cur without being emitted;
	// asking the store again never misses an announcement.
	clear(c.cur)
	if chunked {
		w := abandoned
		return emit(&w)
	}
	return nil
}

// setLast records w as the last window emitted.
func (c *capture) setLast(scn uint64, ts int64, pos posData) {
	c.last.scn, c.last.ts, c.last.pos = scn, ts, pos
}

func (c *capture) setFile(name string) error {
	n, err := fileNumber(name)
	if err != nil {
		return err
	}
	c.file, c.fileNum = name, n
	return nil
}

// handle consumes one event and passes what it completes to emit: the
// window it closes, or a chunk of the transaction in progress (see
// "Windows" in the package doc). emit's errors are returned as they are.
func (c *capture) handle(ev *replication.BinlogEvent, emit func(*source.Window) error) error {
	h := ev.Header
	switch e := ev.Event.(type) {
	case *replication.RotateEvent:
		return c.setFile(string(e.NextLogName))
	case *replication.MariadbGTIDEvent:
		if err := c.begin(h, emit); err != nil {
			return err
		}
		c.tx.gtid = e.GTID.String()
		c.tx.gtidFlags, c.tx.standalone = true, e.IsStandalone()
	case *replication.GTIDEvent:
		if err := c.begin(h, emit); err != nil {
			return err
		}
		c.tx.gtid = mysqlGTID(e.SID, "", e.GNO)
	case *replication.GtidTaggedLogEvent:
		if err := c.begin(h, emit); err != nil {
			return err
		}
		c.tx.gtid = mysqlGTID(e.SID, e.Tag.String(), e.GNO)
	case *replication.QueryEvent:
		return c.query(h, e, emit)
	case *replication.XIDEvent:
		return c.commit(h, emit)
	case *replication.TableMapEvent:
		if !c.tx.open {
			return c.begin(h, emit)
		}
	case *replication.RowsEvent:
		return c.rows(h, e, emit)
	case *replication.HeartbeatEvent:
		return c.idle(h, e, emit)
	case *replication.TransactionPayloadEvent:
		// MySQL binlog_transaction_compression: the whole transaction is
		// inside, commit included.
		for _, in := range e.Events {
			if err := c.handle(in, emit); err != nil {
				return err
			}
		}
	case *replication.GenericEvent:
		if h.EventType == replication.XA_PREPARE_LOG_EVENT {
			return c.commit(h, emit) // see "Limitations" in the package doc
		}
	}
	return nil
}

// mysqlGTID formats uuid[:tag]:gno; anonymous transactions have none.
func mysqlGTID(sid []byte, tag string, gno int64) string {
	if len(sid) != 16 || gno <= 0 {
		return ""
	}
	h := hex.EncodeToString(sid)
	s := h[:8] + "-" + h[8:12] + "-" + h[12:16] + "-" + h[16:20] + "-" + h[20:]
	if tag != "" {
		s += ":" + tag
	}
	return s + ":" + strconv.FormatInt(gno, 10)
}

// begin starts a transaction at the event h. A transaction still open is
// dropped: it had no commit event, so the server never committed it; its
// chunks, if any, are abandoned.
func (c *capture) begin(h *replication.EventHeader, emit func(*source.Window) error) error {
	if err := c.drop(emit); err != nil {
		return err
	}
	c.tx = txn{open: true, at: makeSCN(c.fileNum, h.LogPos-h.EventSize), arena: make([]byte, 0, min(max(c.arenaHint, 256), 1<<20))}
	return nil
}

// drop discards the events of the transaction in progress, abandoning the
// chunks of it already emitted.
func (c *capture) drop(emit func(*source.Window) error) error {
	chunked := c.tx.chunked
	c.tx.touched, c.tx.events, c.tx.chunked = false, nil, false
	if chunked {
		w := abandoned
		return emit(&w)
	}
	return nil
}

func (c *capture) query(h *replication.EventHeader, e *replication.QueryEvent, emit func(*source.Window) error) error {
	q := strings.TrimSpace(string(e.Query))
	switch {
	case strings.EqualFold(q, "BEGIN"):
		if !c.tx.open {
			if err := c.begin(h, emit); err != nil {
				return err
			}
		}
		c.tx.inBegin = true
		return nil
	case strings.EqualFold(q, "COMMIT"):
		return c.commit(h, emit)
	case strings.EqualFold(q, "ROLLBACK"):
		// Only a transaction that changed non-transactional tables is
		// logged with ROLLBACK; its transactional rows were undone. The
		// adapter drops it (see Limitations).
		if err := c.drop(emit); err != nil {
			return err
		}
		return c.commit(h, emit)
	case hasPrefixFold(q, "XA START") || hasPrefixFold(q, "XA BEGIN"):
		if !c.tx.open {
			if err := c.begin(h, emit); err != nil {
				return err
			}
		}
		c.tx.inBegin = true
		return nil
	case hasPrefixFold(q, "XA END") || hasPrefixFold(q, "SAVEPOINT") || hasPrefixFold(q, "ROLLBACK TO") || hasPrefixFold(q, "RELEASE SAVEPOINT"):
		return nil
	}
	if !c.tx.open {
		if err := c.begin(h, emit); err != nil {
			return err
		}
	}
	if err := c.ddl(string(e.Schema), q); err != nil {
		return err
	}
	if c.tx.inBegin || (c.tx.gtidFlags && !c.tx.standalone) {
		return nil // a statement inside a transaction: COMMIT or XID ends it
	}
	return c.commit(h, emit)
}

func hasPrefixFold(s, p string) bool {
	return len(s) >= len(p) && strings.EqualFold(s[:len(p)], p)
}

// marker emits the schema-change frame of a DDL statement: the version in
// force plus what happened (d's DDL fields).
func (c *capture) marker(t schema.Table, d event.SchemaChange) error {
	sc := schema.ChangeOf(t)
	sc.DDL, sc.Truncate, sc.Drop, sc.RenamedFrom, sc.RenamedTo = d.DDL, d.Truncate, d.Drop, d.RenamedFrom, d.RenamedTo
	p, err := json.Marshal(sc)
	if err != nil {
		return err
	}
	c.tx.events = append(c.tx.events, event.Event{Kind: event.KindSchemaChange, Source: t.ID, SchemaVersion: t.Version, Payload: p})
	return nil
}

// ddl adds the schema-change events a DDL statement calls for; see the
// package doc ("DDL").
func (c *capture) ddl(defaultDB, q string) error {
	for _, op := range parseDDL(defaultDB, q) {
		if op.dropDB {
			for _, name := range c.store.names() {
				db, table, _ := strings.Cut(name, ".")
				if db == op.db && c.filter.match(db, table) {
					if err := c.ddlOn(ddlOp{kind: ddlDrop, db: db, table: table}); err != nil {
						return err
					}
				}
			}
			continue
		}
		if err := c.ddlOn(op); err != nil {
			return err
		}
	}
	return nil
}

func (c *capture) ddlOn(op ddlOp) error {
	from := op.db + "." + op.table
	captured := c.filter.match(op.db, op.table)
	if captured {
		c.tx.touched = true
	}
	known, isKnown := c.store.versionAt(from, c.tx.at)
	switch op.kind {
	case ddlCreate:
		// The new definition is not in the log until the first row: it is
		// announced then.
		return nil
	case ddlAlter:
		if captured && isKnown {
			return c.marker(known, event.SchemaChange{DDL: "alter"})
		}
	case ddlTruncate:
		if captured && isKnown {
			return c.marker(known, event.SchemaChange{DDL: "truncate", Truncate: true})
		}
	case ddlDrop:
		if captured && isKnown {
			return c.marker(known, event.SchemaChange{DDL: "drop", Drop: true})
		}
	case ddlRename:
		to := op.toDB + "." + op.to
		if captured && isKnown {
			if err := c.marker(known, event.SchemaChange{DDL: "rename", RenamedTo: to}); err != nil {
				return err
			}
		}
		if !c.filter.match(op.toDB, op.to) {
			return nil
		}
		c.tx.touched = true
		if !isKnown {
			return nil
		}
		// The renamed table keeps its definition: announce it under the
		// new name now, so consumers of the new name know it before its
		// first row.
		def := known
		def.ID, def.Version, def.Name = 0, 0, to
		t, err := c.store.resolve(def)
		if err != nil {
			return err
		}
		if _, err := c.store.announce(t.ID, t.Name, c.tx.at, t.Version); err != nil {
			return err
		}
		c.cur[t.ID] = t.Version
		return c.marker(t, event.SchemaChange{DDL: "rename", RenamedFrom: from})
	}
	return nil
}

func (c *capture) rows(h *replication.EventHeader, e *replication.RowsEvent, emit func(*source.Window) error) error {
	if !c.tx.open {
		if err := c.begin(h, emit); err != nil {
			return err
		}
	}
	tv, err := c.tables.resolve(e.Table)
	if err != nil || tv == nil {
		return err
	}
	c.tx.touched = true
	t := &tv.table
	if v, ok := c.cur[t.ID]; !ok || v != t.Version {
		ann, err := c.store.announce(t.ID, t.Name, c.tx.at, t.Version)
		if err != nil {
			return err
		}
		if ann {
			ev, err := event.NewSchemaChange(0, 0, tv.change)
			if err != nil {
				return err
			}
			c.tx.events = append(c.tx.events, ev)
		}
		c.cur[t.ID] = t.Version
	}
	for i := range e.SkippedColumns {
		if len(e.SkippedColumns[i]) > 0 {
			return &SettingError{Flavor: flavorName(c.tables.flavor), Setting: "binlog_row_image", Value: "not FULL (a row event of " + t.Name + " lacks columns)",
				Want: "FULL", Why: "so that every row event carries whole rows"}
		}
	}
	switch e.Type() {
	case replication.EnumRowsEventTypeInsert:
		for _, row := range e.Rows {
			if err := c.appendEvent(tv, event.OpInsert, row, nil); err != nil {
				return err
			}
		}
	case replication.EnumRowsEventTypeDelete:
		for _, row := range e.Rows {
			if err := c.appendEvent(tv, event.OpDelete, nil, row); err != nil {
				return err
			}
		}
	case replication.EnumRowsEventTypeUpdate:
		if len(e.Rows)%2 != 0 {
			return fmt.Errorf("%w: update of %s with an odd number of row images", ErrDecode, t.Name)
		}
		for i := 0; i < len(e.Rows); i += 2 {
			before, after := e.Rows[i], e.Rows[i+1]
			if err := c.appendUpdate(tv, before, after); err != nil {
				return err
			}
		}
	default:
		return fmt.Errorf("%w: rows event of unknown type %v for %s", ErrDecode, h.EventType, t.Name)
	}
	return c.chunk(emit)
}

// chunk emits the pending events of the transaction in progress as a chunk
// once they take chunkBytes or number chunkEvents, and then reuses their
// memory. Chunks end only
// after whole rows events, so a schema-change event always travels with
// or before the rows that use its version.
func (c *capture) chunk(emit func(*source.Window) error) error {
	if (c.chunkBytes <= 0 || c.tx.pending() < c.chunkBytes) && (c.chunkEvents <= 0 || len(c.tx.events) < c.chunkEvents) {
		return nil
	}
	w := source.Window{Partial: true, Events: c.tx.events}
	if err := emit(&w); err != nil {
		return err
	}
	// The relay has copied the chunk: its events and arena are reused.
	clear(c.tx.events)
	c.tx.events, c.tx.arena, c.tx.chunked = c.tx.events[:0], c.tx.arena[:0], true
	return nil
}

// appendUpdate emits an update, or a delete and an insert when the key
// changed (so that consumers keyed by the primary key stay right).
func (c *capture) appendUpdate(tv *tableVersion, before, after []any) error {
	start := len(c.tx.arena)
	var err error
	if c.tx.arena, err = tv.appendKey(c.tx.arena, before); err != nil {
		return err
	}
	mid := len(c.tx.arena)
	if c.tx.arena, err = tv.appendKey(c.tx.arena, after); err != nil {
		return err
	}
	oldKey, newKey := c.tx.arena[start:mid], c.tx.arena[mid:]
	same := string(oldKey) == string(newKey)
	c.tx.arena = c.tx.arena[:start]
	if !same {
		if err := c.appendEvent(tv, event.OpDelete, nil, before); err != nil {
			return err
		}
		return c.appendEvent(tv, event.OpInsert, after, nil)
	}
	return c.appendEvent(tv, event.OpUpdate, after, before)
}

// appendEvent encodes one data event into the transaction's arena. Earlier
// events keep pointing into the arena's old backing arrays when it grows.
func (c *capture) appendEvent(tv *tableVersion, op event.Op, row, before []any) error {
	ev := event.Event{Kind: event.KindData, Op: op, Source: tv.table.ID, SchemaVersion: tv.table.Version}
	var err error
	keyRow := row
	if keyRow == nil {
		keyRow = before
	}
	a := c.tx.arena
	start := len(a)
	if a, err = tv.appendKey(a, keyRow); err != nil {
		return err
	}
	k := len(a)
	if row != nil {
		if a, err = tv.appendRow(a, row); err != nil {
			return err
		}
	}
	p := len(a)
	if before != nil {
		if a, err = tv.appendRow(a, before); err != nil {
			return err
		}
		ev.HasBefore = true
	}
	ev.Key = a[start:k:k]
	if row != nil {
		ev.Payload = a[k:p:p]
	}
	if before != nil {
		ev.Before = a[p:len(a):len(a)]
	}
	c.tx.arena = a
	c.tx.events = append(c.tx.events, ev)
	return nil
}

// commit closes the transaction at its commit event h and emits its
// window (the final chunk, when chunks of it were emitted).
func (c *capture) commit(h *replication.EventHeader, emit func(*source.Window) error) error {
	tx := c.tx
	c.tx = txn{}
	c.arenaHint = min(len(tx.arena), 1<<20)
	if h.LogPos < 4 {
		return fmt.Errorf("%w: commit event at %s has no end position", ErrDecode, c.file)
	}
	scn := makeSCN(c.fileNum, h.LogPos)
	if scn <= c.last.scn {
		return fmt.Errorf("%w: a transaction ends at %s:%d (SCN %d), not after the last window (SCN %d, %s:%d)",
			ErrPositionBackwards, c.file, h.LogPos, scn, c.last.scn, c.last.pos.File, c.last.pos.Pos)
	}
	if tx.gtid != "" {
		c.lastGTID = tx.gtid
	}
	pos := posData{File: c.file, Pos: h.LogPos, GTID: tx.gtid}
	ts := int64(h.Timestamp) * int64(time.Second)
	if !tx.touched {
		// A transaction of tables not captured: an empty window at most
		// once per heartbeat interval, timed by the log's own clock.
		if c.heartbeat <= 0 || ts < c.last.ts+c.heartbeat {
			return nil
		}
		tx.events = nil
	}
	for i := range tx.events {
		tx.events[i].SCN, tx.events[i].Timestamp = scn, ts
	}
	c.setLast(scn, ts, pos)
	return emit(&source.Window{SCN: scn, Timestamp: ts, TxID: tx.gtid, Events: tx.events, Position: pos.position(scn)})
}

// idle handles a server heartbeat: the server has nothing more to send, and
// its position may be past the last window because of skipped
// transactions. It then returns an empty window at that position.
func (c *capture) idle(h *replication.EventHeader, e *replication.HeartbeatEvent, emit func(*source.Window) error) error {
	if c.tx.open || h.LogPos < 4 || (e.Filename != "" && e.Filename != c.file) {
		return nil
	}
	scn := makeSCN(c.fileNum, h.LogPos)
	if scn <= c.last.scn {
		return nil
	}
	pos := posData{File: c.file, Pos: h.LogPos, GTID: c.lastGTID}
	ts := c.now().UnixNano()
	if ts < c.last.ts {
		ts = c.last.ts
	}
	c.setLast(scn, ts, pos)
	return emit(&source.Window{SCN: scn, Timestamp: ts, TxID: "", Position: pos.position(scn)})
}
