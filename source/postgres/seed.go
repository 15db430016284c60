package postgres

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"time"
	"unicode/utf8"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgtype"

	"github.com/databus-go/databus/event"
	"github.com/databus-go/databus/schema"
	"github.com/databus-go/databus/source"
)

// ErrBadCursor is wrapped by ReadChunk's error when its cursor is not one
// ReadChunk returned for the table's current key.
var ErrBadCursor = errors.New("databus: postgres: bad seed cursor")

// ErrNotSeedable is wrapped by ReadChunk's error when the table cannot be
// read in key order: it has no unique key (its key is the whole row), or
// it is not an ordinary table.
var ErrNotSeedable = errors.New("databus: postgres: table cannot be seeded")

// ChunkReader reads the rows that already exist in the captured tables, for
// a bootstrap seed. It implements source.ChunkReader; see "Seeding" in the
// package doc for what it guarantees.
//
// It has one connection of its own (opened on first use, opened again after
// a failure), never the replication slot. It is used by one goroutine at a
// time; Close may be called from any goroutine.
type ChunkReader struct {
	cfg      Config
	cat      *catalog        // its connection: reads, catalog lookups and watermark writes
	captured map[string]bool // Config.Tables
	marks    map[string]bool // the watermark tables the capture delivers

	// Only touched by the goroutine using the reader.
	plans map[string]*seedPlan // by table name: the plan of the last version read
	ready map[string]bool      // watermark tables created and published

	closed atomic.Bool
}

var _ source.ChunkReader = (*ChunkReader)(nil)

// NewChunkReader returns a ChunkReader for cfg, the configuration of the
// Source whose tables it reads, which it validates as New does. It does not
// connect.
func NewChunkReader(cfg Config) (*ChunkReader, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	cfg = cfg.withDefaults()
	cc, err := pgx.ParseConfig(string(cfg.ConnString))
	if err != nil {
		return nil, fmt.Errorf("%w: ConnString: %v", ErrConfig, err)
	}
	delete(cc.RuntimeParams, "replication")
	if cc.RuntimeParams["application_name"] == "" {
		cc.RuntimeParams["application_name"] = "databus seed"
	}
	// The replication session's settings: values print as pgoutput prints
	// them to the capture, so that the same conversion gives the same bytes.
	for k, v := range replicationParams {
		cc.RuntimeParams[k] = v
	}
	r := &ChunkReader{
		cfg:      cfg,
		cat:      newCatalog(cc),
		captured: map[string]bool{},
		marks:    map[string]bool{},
		plans:    map[string]*seedPlan{},
		ready:    map[string]bool{},
	}
	for _, t := range cfg.Tables {
		r.captured[t] = true
		if _, rel, _ := strings.Cut(t, "."); rel == source.WatermarkTableName {
			r.marks[t] = true // configured explicitly: captured all the same
		}
	}
	for _, t := range watermarkTables(cfg.Tables) {
		r.marks[t] = true
	}
	return r, nil
}

// watermarkTables returns the watermark table of every schema of tables
// ("<schema>._databus_watermark"), in order of first appearance, except
// those tables lists itself.
func watermarkTables(tables []string) []string {
	var out []string
	for _, t := range tables {
		ns, _, _ := strings.Cut(t, ".")
		name := ns + "." + source.WatermarkTableName
		if !slices.Contains(tables, name) && !slices.Contains(out, name) {
			out = append(out, name)
		}
	}
	return out
}

// conn returns the reader's connection, connecting when there is none.
func (r *ChunkReader) conn(ctx context.Context) (*pgx.Conn, error) {
	if r.closed.Load() {
		return nil, ErrClosed
	}
	conn, err := r.cat.get(ctx)
	if err != nil {
		return nil, err
	}
	if r.closed.Load() {
		r.cat.close() // Close ran while this connected
		return nil, ErrClosed
	}
	if r.cat.version == 0 {
		var v string
		if err := conn.QueryRow(ctx, `SELECT current_setting('server_version_num')`).Scan(&v); err != nil {
			return nil, r.cat.check(fmt.Errorf("databus: postgres: read the server version: %w", err))
		}
		r.cat.version, _ = strconv.Atoi(v)
	}
	return conn, nil
}

// Close closes the reader's connection. Calls after Close fail with
// ErrClosed.
func (r *ChunkReader) Close() error {
	if !r.closed.Swap(true) {
		r.cat.close()
	}
	return nil
}

// ---- the live definition ----

// liveTable is a table's definition as the catalog has it now: the columns
// a relation message would carry (generated columns excluded), and the
// replica identity key in the key index's column order.
type liveTable struct {
	kind      string // relkind
	replident string // relreplident
	cols      []colSpec
	// order is the key index's key columns (INCLUDE columns excluded), in
	// the index's order: none when the key is the whole row.
	order []string
}

func (l *liveTable) equal(o *liveTable) bool {
	return l.kind == o.kind && l.replident == o.replident && slices.Equal(l.cols, o.cols) && slices.Equal(l.order, o.order)
}

// keyColumns is order in column order, the order of schema.Table.Key.
func (l *liveTable) keyColumns() []string {
	pos := func(name string) int {
		return slices.IndexFunc(l.cols, func(c colSpec) bool { return c.name == name })
	}
	key := slices.Clone(l.order)
	slices.SortFunc(key, func(a, b string) int { return pos(a) - pos(b) })
	return key
}

// describe reads a table's live definition in one statement, so that it
// can run inside ReadChunk's transaction; ok=false when there is no such
// table. The key follows the capture's rule (catalog.describeTable): the
// primary key for REPLICA IDENTITY DEFAULT and FULL, the identity index for
// USING INDEX, none for NOTHING.
func (r *ChunkReader) describe(ctx context.Context, conn *pgx.Conn, ns, rel string) (l liveTable, ok bool, err error) {
	generated, nkey := " AND a.attgenerated = ''", "indnkeyatts"
	if r.cat.version < 120000 {
		generated = ""
	}
	if r.cat.version < 110000 {
		nkey = "indnatts"
	}
	attrs := `FROM pg_catalog.pg_attribute a WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped` + generated + ` ORDER BY a.attnum`
	var names []string
	var oids []int64
	var mods []int32
	err = conn.QueryRow(ctx, `SELECT c.relkind::text, c.relreplident::text,
			ARRAY(SELECT a.attname::text `+attrs+`), ARRAY(SELECT a.atttypid::int8 `+attrs+`), ARRAY(SELECT a.atttypmod `+attrs+`),
			ARRAY(SELECT a.attname::text FROM pg_catalog.pg_index i
				CROSS JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, ord)
				JOIN pg_catalog.pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
				WHERE i.indrelid = c.oid AND k.ord <= i.`+nkey+` AND CASE c.relreplident
					WHEN 'i' THEN i.indisreplident WHEN 'n' THEN false ELSE i.indisprimary END
				ORDER BY k.ord)
		FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
		WHERE n.nspname = $1 AND c.relname = $2`, ns, rel).Scan(&l.kind, &l.replident, &names, &oids, &mods, &l.order)
	if errors.Is(err, pgx.ErrNoRows) {
		return l, false, nil
	}
	if err != nil {
		return l, false, r.cat.check(fmt.Errorf("databus: postgres: read the definition of %s.%s: %w", ns, rel, err))
	}
	if len(oids) != len(names) || len(mods) != len(names) {
		return l, false, fmt.Errorf("databus: postgres: read the definition of %s.%s: %d names, %d types, %d modifiers", ns, rel, len(names), len(oids), len(mods))
	}
	l.cols = make([]colSpec, len(names))
	for i := range names {
		l.cols[i] = colSpec{name: names[i], oid: uint32(oids[i]), typmod: mods[i]}
	}
	return l, true, nil
}

// ---- plans ----

// seedPlan is how ReadChunk reads one schema version of a table: the
// statements, and the live definition they were checked against.
type seedPlan struct {
	table schema.Table // the version read
	live  liveTable    // the definition the version was found equal to
	types []colType    // per column of table before UnchangedColumn
	key   []int        // table.Key's column indexes: the event key
	order []int        // the key index's columns, in its order: ORDER BY and cursor
	names []string     // the names of order's columns
	// first reads from the start (parameter: the limit); next after a
	// cursor (parameters: the order columns' values, then the limit).
	first, next string
	nextOIDs    []uint32
}

// errNoKey refuses a table whose key is the whole row: without a unique
// key, pages cannot be told apart (duplicate rows) and NULLs do not
// compare, so rows could be skipped.
func errNoKey(name string) error {
	return fmt.Errorf("%w: %s has no primary key (nor replica identity index): seeding pages through a table by a unique key; add one (ALTER TABLE %s ADD PRIMARY KEY (...))",
		ErrNotSeedable, name, quoteTable(name))
}

// plan returns the plan of version t, checking t against the live
// definition when it has no plan yet. The error wraps
// source.ErrSchemaMismatch when t is not the table's definition.
func (r *ChunkReader) plan(ctx context.Context, conn *pgx.Conn, t schema.Table) (*seedPlan, error) {
	if p := r.plans[t.Name]; p != nil && sameDefinition(&p.table, &t) {
		return p, nil
	}
	delete(r.plans, t.Name)
	ns, rel, _ := strings.Cut(t.Name, ".")
	live, ok, err := r.describe(ctx, conn, ns, rel)
	if err != nil {
		return nil, err
	}
	if !ok {
		return nil, fmt.Errorf("databus: postgres: seed: table %s does not exist", t.Name)
	}
	if live.kind != "r" {
		return nil, fmt.Errorf("%w: %s is not an ordinary table (relkind %s)", ErrNotSeedable, t.Name, live.kind)
	}
	// The definition as the capture builds it from a relation message
	// carrying the same columns and key.
	def, err := r.cat.buildTable(ctx, t.Name, live.cols, live.keyColumns())
	if err != nil {
		return nil, err
	}
	if d := tableDiff(&def, &t); d != "" {
		return nil, fmt.Errorf("%w: %s version %d: %s", source.ErrSchemaMismatch, t.Name, t.Version, d)
	}
	if len(live.order) == 0 {
		return nil, errNoKey(t.Name)
	}
	types, _, key, err := rowEncoding(t)
	if err != nil {
		return nil, err
	}
	p := &seedPlan{table: t, live: live, types: types, key: key, names: live.order}
	cols := make([]string, len(types))
	for i := range types {
		cols[i] = pgx.Identifier{t.Columns[i].Name}.Sanitize()
	}
	var order, params []string
	for i, name := range live.order {
		c := t.Column(name)
		p.order = append(p.order, c)
		p.nextOIDs = append(p.nextOIDs, live.cols[c].oid)
		order = append(order, pgx.Identifier{name}.Sanitize())
		params = append(params, "$"+strconv.Itoa(i+1))
	}
	p.nextOIDs = append(p.nextOIDs, pgtype.Int8OID)
	sel := "SELECT " + strings.Join(cols, ", ") + " FROM " + quoteTable(t.Name)
	orderBy := " ORDER BY " + strings.Join(order, ", ")
	p.first = sel + orderBy + " LIMIT $1"
	// A row comparison, which a btree index on the key serves as an
	// index condition: each chunk starts where the previous one ended.
	cmp := order[0] + " > " + params[0]
	if len(order) > 1 {
		cmp = "(" + strings.Join(order, ", ") + ") > (" + strings.Join(params, ", ") + ")"
	}
	p.next = sel + " WHERE " + cmp + orderBy + " LIMIT $" + strconv.Itoa(len(order)+1)
	r.plans[t.Name] = p
	return p, nil
}

// sameColumn compares two columns, their Avro types as JSON values.
func sameColumn(a, b *schema.Column) bool {
	return a.Name == b.Name && a.Nullable == b.Nullable && a.SourceType == b.SourceType && sameJSON(a.Avro, b.Avro)
}

func sameJSON(a, b json.RawMessage) bool {
	if bytes.Equal(a, b) {
		return true
	}
	var ca, cb bytes.Buffer
	return json.Compact(&ca, a) == nil && json.Compact(&cb, b) == nil && bytes.Equal(ca.Bytes(), cb.Bytes())
}

func sameDefinition(a, b *schema.Table) bool {
	return a.Name == b.Name && a.ID == b.ID && a.Version == b.Version && slices.Equal(a.Key, b.Key) &&
		slices.EqualFunc(a.Columns, b.Columns, func(x, y schema.Column) bool { return sameColumn(&x, &y) })
}

// tableDiff says how the live definition differs from schema version t,
// or "" when they are the same.
func tableDiff(live, t *schema.Table) string {
	data := func(cols []schema.Column) []schema.Column {
		if n := len(cols); n > 0 && cols[n-1].Name == UnchangedColumn {
			return cols[:n-1]
		}
		return cols
	}
	lc, tc := data(live.Columns), data(t.Columns)
	desc := func(c *schema.Column, other *schema.Column) string {
		s := c.Name + " " + c.SourceType
		if other != nil && other.Name == c.Name && other.SourceType == c.SourceType {
			s += fmt.Sprintf(" (avro %s, nullable %v)", c.Avro, c.Nullable)
		}
		return s
	}
	for i := range max(len(lc), len(tc)) {
		switch {
		case i >= len(lc):
			return fmt.Sprintf("its column %d, %s, is not in the table", i+1, desc(&tc[i], nil))
		case i >= len(tc):
			return fmt.Sprintf("the table has a column %d, %s, which it lacks", i+1, desc(&lc[i], nil))
		case !sameColumn(&lc[i], &tc[i]):
			return fmt.Sprintf("column %d is %s in the table, %s in the schema version", i+1, desc(&lc[i], &tc[i]), desc(&tc[i], &lc[i]))
		}
	}
	if len(t.Columns) == len(tc) {
		return "it does not end with column " + UnchangedColumn + ": it is not a schema of this adapter"
	}
	if !slices.Equal(live.Key, t.Key) {
		return fmt.Sprintf("the key is (%s) in the table, (%s) in the schema version", strings.Join(live.Key, ", "), strings.Join(t.Key, ", "))
	}
	return ""
}

// ---- cursors ----

// seedCursor is the cursor's JSON: the key index's column names and the
// last row's values of those columns, in the server's text form (as
// strings; as bytes, base64, when one is not valid UTF-8, so that any value
// comes back exact).
type seedCursor struct {
	Key     []string `json:"key"`
	After   []string `json:"after,omitempty"`
	After64 [][]byte `json:"after64,omitempty"`
}

func encodeCursor(names []string, vals [][]byte) string {
	c := seedCursor{Key: names}
	if slices.IndexFunc(vals, func(v []byte) bool { return !utf8.Valid(v) }) >= 0 {
		c.After64 = vals
	} else {
		c.After = make([]string, len(vals))
		for i, v := range vals {
			c.After[i] = string(v)
		}
	}
	b, _ := json.Marshal(c)
	return string(b)
}

// decodeCursor returns the key values of cursor s for a key whose index
// has the columns names, in order; nil for "" (the start).
func decodeCursor(s string, names []string) ([][]byte, error) {
	if s == "" {
		return nil, nil
	}
	q := s
	if len(q) > 200 {
		q = q[:200] + "..."
	}
	var c seedCursor
	dec := json.NewDecoder(strings.NewReader(s))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&c); err != nil {
		return nil, fmt.Errorf("%w %q: %v", ErrBadCursor, q, err)
	}
	if dec.More() {
		return nil, fmt.Errorf("%w %q: data after the JSON object", ErrBadCursor, q)
	}
	if !slices.Equal(c.Key, names) {
		if len(c.Key) == len(names) && !slices.ContainsFunc(c.Key, func(k string) bool { return !slices.Contains(names, k) }) {
			return nil, fmt.Errorf("%w %q: it pages by (%s) but the key index now orders (%s): positions differ, restart the seed from the beginning",
				ErrBadCursor, q, strings.Join(c.Key, ", "), strings.Join(names, ", "))
		}
		return nil, fmt.Errorf("%w %q: it is for the key (%s), the table's key is (%s)", ErrBadCursor, q, strings.Join(c.Key, ", "), strings.Join(names, ", "))
	}
	var vals [][]byte
	switch {
	case c.After != nil && c.After64 != nil:
		return nil, fmt.Errorf("%w %q: both after and after64", ErrBadCursor, q)
	case c.After != nil:
		vals = make([][]byte, len(c.After))
		for i, v := range c.After {
			vals[i] = []byte(v)
		}
	default:
		vals = c.After64
	}
	if len(vals) != len(names) {
		return nil, fmt.Errorf("%w %q: %d values for a key of %d columns", ErrBadCursor, q, len(vals), len(names))
	}
	for i, v := range vals {
		if v == nil {
			return nil, fmt.Errorf("%w %q: no value for key column %s", ErrBadCursor, q, names[i])
		}
	}
	return vals, nil
}

// ---- ReadChunk ----

// maxReplans bounds how often one ReadChunk rebuilds its plan after the
// table's definition changed under it.
const maxReplans = 3

// ReadChunk reads up to limit rows of t after cursor in the key index's
// order and returns them as the insert events the capture would produce
// for them: Key and Payload are byte for byte the capture's. next is the
// cursor after the last row (cursor itself when there is none); fewer than
// limit rows means the table has no more.
//
// Before it reads, it waits for every transaction that had a transaction
// id when it was called to end (see "Seeding" in the package doc: that is
// what makes every change committed before the low watermark visible to
// the read); ctx bounds the wait. The read itself is one SELECT in a short
// read-only transaction that also checks the table's definition.
//
// Errors: ErrSchemaMismatch (wrapped) when t is not the table's live
// definition (columns, their types and order, key); ErrBadCursor (wrapped)
// for a cursor ReadChunk did not make for this key; ErrNotSeedable
// (wrapped) for a table without a unique key; ErrClosed after Close; a
// plain error for a table that is not in Config.Tables or does not exist,
// and for the server's errors.
func (r *ChunkReader) ReadChunk(ctx context.Context, t schema.Table, cursor string, limit int) (rows []event.Event, next string, err error) {
	if limit <= 0 {
		return nil, "", fmt.Errorf("databus: postgres: seed: limit %d is not positive", limit)
	}
	if !r.captured[t.Name] {
		return nil, "", fmt.Errorf("databus: postgres: seed: table %s is not in Config.Tables", t.Name)
	}
	conn, err := r.conn(ctx)
	if err != nil {
		return nil, "", err
	}
	for replans := 0; ; replans++ {
		p, err := r.plan(ctx, conn, t)
		if err != nil {
			return nil, "", err
		}
		after, err := decodeCursor(cursor, p.names)
		if err != nil {
			return nil, "", err
		}
		if replans == 0 {
			if err := r.settle(ctx, conn); err != nil {
				return nil, "", err
			}
		}
		rows, last, changed, err := r.read(ctx, conn, p, after, limit)
		if err != nil {
			return nil, "", err
		}
		if !changed {
			if last == nil {
				return rows, cursor, nil
			}
			return rows, encodeCursor(p.names, last), nil
		}
		// A DDL committed between the plan and the read: check t again.
		delete(r.plans, t.Name)
		if replans+1 == maxReplans {
			return nil, "", fmt.Errorf("databus: postgres: seed: the definition of %s changed %d times while one chunk was read", t.Name, maxReplans)
		}
	}
}

// settle waits until every transaction that had a transaction id when it
// was called has ended. It takes a transaction id of its own (committed at
// once, without waiting for the WAL flush) as the bound: the oldest
// transaction still in progress is then younger than every one that
// committed before the call.
func (r *ChunkReader) settle(ctx context.Context, conn *pgx.Conn) error {
	pg := conn.PgConn()
	res, err := pg.Exec(ctx, "BEGIN; SET LOCAL synchronous_commit TO off; SELECT txid_current(); COMMIT").ReadAll()
	if err != nil {
		r.rollback(pg)
		return r.cat.check(fmt.Errorf("databus: postgres: seed: take a transaction id: %w", err))
	}
	var bound int64 = -1
	for _, rs := range res {
		if len(rs.Rows) == 1 && len(rs.Rows[0]) == 1 {
			bound, err = strconv.ParseInt(string(rs.Rows[0][0]), 10, 64)
		}
	}
	if bound < 0 || err != nil {
		return fmt.Errorf("databus: postgres: seed: take a transaction id: unexpected result")
	}
	var delay time.Duration
	for {
		var xmin int64
		if err := conn.QueryRow(ctx, `SELECT txid_snapshot_xmin(txid_current_snapshot())`).Scan(&xmin); err != nil {
			return r.cat.check(fmt.Errorf("databus: postgres: seed: read the oldest transaction in progress: %w", err))
		}
		if xmin > bound {
			return nil
		}
		delay = min(max(2*delay, 500*time.Microsecond), 50*time.Millisecond)
		tm := time.NewTimer(delay)
		select {
		case <-ctx.Done():
			tm.Stop()
			return fmt.Errorf("databus: postgres: seed: waiting for the transactions in progress before the chunk to end (the oldest is xid %d; see pg_stat_activity.backend_xid and pg_prepared_xacts): %w", xmin, ctx.Err())
		case <-tm.C:
		}
	}
}

// rollback ends a transaction an error left open, if the connection
// survived.
func (r *ChunkReader) rollback(pg *pgconn.PgConn) {
	if pg.IsClosed() {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if pg.TxStatus() != 'I' {
		_ = pg.Exec(ctx, "ROLLBACK").Close()
	}
}

// read runs one chunk's SELECT in a read-only transaction and checks,
// before it commits, that the table still has the definition p was made
// for: the SELECT's lock on the table keeps every DDL that could change it
// (they all take ACCESS EXCLUSIVE) from committing until then, so the rows
// are those of that definition. changed reports that it is not (the rows
// are then dropped). last is the last row's order values, nil when no row.
func (r *ChunkReader) read(ctx context.Context, conn *pgx.Conn, p *seedPlan, after [][]byte, limit int) (rows []event.Event, last [][]byte, changed bool, err error) {
	pg := conn.PgConn()
	if err := pg.Exec(ctx, "BEGIN ISOLATION LEVEL READ COMMITTED READ ONLY").Close(); err != nil {
		r.rollback(pg)
		return nil, nil, false, r.cat.check(fmt.Errorf("databus: postgres: seed: begin: %w", err))
	}
	defer r.rollback(pg) // a no-op after COMMIT

	sql, params, oids := p.first, [][]byte{[]byte(strconv.Itoa(limit))}, []uint32{pgtype.Int8OID}
	if after != nil {
		sql, params, oids = p.next, append(slices.Clone(after), params[0]), p.nextOIDs
	}
	t := &p.table
	rr := pg.ExecParams(ctx, sql, params, oids, nil, nil)
	// (The fields' types cannot be compared with the columns': a
	// RowDescription gives a domain's base type.)
	same := len(rr.FieldDescriptions()) == len(p.types)
	var (
		a        arena
		key, img []byte
		encErr   error
	)
	if same {
		rows = make([]event.Event, 0, min(limit, 4096))
		last = make([][]byte, len(p.order))
		for rr.NextRow() {
			vals := rr.Values()
			if key, img, encErr = p.encode(key[:0], img[:0], vals); encErr != nil {
				break
			}
			rows = append(rows, event.Event{
				Kind: event.KindData, Op: event.OpInsert, Source: t.ID, SchemaVersion: t.Version,
				Key: a.copy(key), Payload: a.copy(img),
			})
			for i, c := range p.order {
				last[i] = append(last[i][:0], vals[c]...)
			}
		}
	}
	_, qerr := rr.Close()
	if encErr != nil {
		return nil, nil, false, encErr
	}
	if qerr == nil && !same {
		// The SELECT is not what the plan expects: a definition changed.
		return nil, nil, true, nil
	}
	ns, rel, _ := strings.Cut(t.Name, ".")
	if qerr != nil {
		r.rollback(pg)
		if pg.IsClosed() {
			return nil, nil, false, r.cat.check(fmt.Errorf("databus: postgres: seed: read %s: %w", t.Name, qerr))
		}
		// An error that a DDL explains (a column or the table gone, a key
		// of another type) means: plan again.
		live, ok, err := r.describe(ctx, conn, ns, rel)
		if err != nil {
			return nil, nil, false, err
		}
		if !ok || !live.equal(&p.live) {
			return nil, nil, true, nil
		}
		var pgErr *pgconn.PgError
		if after != nil && errors.As(qerr, &pgErr) && strings.HasPrefix(pgErr.Code, "22") {
			return nil, nil, false, fmt.Errorf("%w: the server refuses its key values for (%s): %v", ErrBadCursor, strings.Join(p.names, ", "), qerr)
		}
		return nil, nil, false, fmt.Errorf("databus: postgres: seed: read %s: %w", t.Name, qerr)
	}
	live, ok, err := r.describe(ctx, conn, ns, rel)
	if err != nil {
		return nil, nil, false, err
	}
	if !ok || !live.equal(&p.live) {
		return nil, nil, true, nil
	}
	if err := pg.Exec(ctx, "COMMIT").Close(); err != nil {
		return nil, nil, false, r.cat.check(fmt.Errorf("databus: postgres: seed: commit: %w", err))
	}
	if len(rows) == 0 {
		last = nil
	}
	return rows, last, false, nil
}

// encode appends a row's key to key and its image to img, the row given as
// its columns' text values (nil for NULL), exactly as the capture encodes
// the tuple of an INSERT (decoder.key and decoder.image): an insert carries
// every value, so the UnchangedColumn array is empty.
func (p *seedPlan) encode(key, img []byte, vals [][]byte) ([]byte, []byte, error) {
	var err error
	for _, i := range p.key {
		if key, err = appendKey(key, p.types[i], vals[i], vals[i] == nil); err != nil {
			return nil, nil, fmt.Errorf("%w: seed %s key column %s: %v", ErrDecode, p.table.Name, p.table.Columns[i].Name, err)
		}
	}
	for i, v := range vals {
		if v == nil {
			img = append(img, unionNull)
			continue
		}
		img = append(img, unionValue)
		if img, err = appendValue(img, p.types[i], v); err != nil {
			return nil, nil, fmt.Errorf("%w: seed %s column %s: %v", ErrDecode, p.table.Name, p.table.Columns[i].Name, err)
		}
	}
	return key, append(img, 0), nil
}

// ---- EstimateRows ----

// smallTable is the size up to which EstimateRows counts the rows.
const smallTable = 8 << 20

// EstimateRows returns the number of rows of t: counted when the table
// takes at most 8 MiB; otherwise the planner's estimate (statistics scaled
// to the table's current size), or, for a table never analyzed, the rows
// of a sample of about 128 pages (TABLESAMPLE SYSTEM) scaled to its size.
func (r *ChunkReader) EstimateRows(ctx context.Context, t schema.Table) (uint64, error) {
	if !r.captured[t.Name] {
		return 0, fmt.Errorf("databus: postgres: seed: table %s is not in Config.Tables", t.Name)
	}
	conn, err := r.conn(ctx)
	if err != nil {
		return 0, err
	}
	ns, rel, _ := strings.Cut(t.Name, ".")
	var size, block int64
	var reltuples float64
	err = conn.QueryRow(ctx, `SELECT pg_catalog.pg_relation_size(c.oid), current_setting('block_size')::int8, c.reltuples::float8
		FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
		WHERE n.nspname = $1 AND c.relname = $2`, ns, rel).Scan(&size, &block, &reltuples)
	if errors.Is(err, pgx.ErrNoRows) {
		return 0, fmt.Errorf("databus: postgres: seed: table %s does not exist", t.Name)
	}
	if err != nil {
		return 0, r.cat.check(fmt.Errorf("databus: postgres: estimate the rows of %s: %w", t.Name, err))
	}
	if size <= smallTable {
		var n int64
		if err := conn.QueryRow(ctx, "SELECT count(*) FROM "+quoteTable(t.Name)).Scan(&n); err != nil {
			return 0, r.cat.check(fmt.Errorf("databus: postgres: count the rows of %s: %w", t.Name, err))
		}
		return uint64(n), nil
	}
	if reltuples <= 0 {
		// Never analyzed (-1; 0 before PostgreSQL 14): the planner would
		// guess the rows' width from their types alone, which can be
		// wrong several times over. Count a sample of about 128 pages.
		pct := min(100, 100*128/(float64(size)/float64(max(block, 1))))
		var n int64
		if err := conn.QueryRow(ctx, "SELECT count(*) FROM "+quoteTable(t.Name)+" TABLESAMPLE SYSTEM ("+
			strconv.FormatFloat(pct, 'f', 6, 64)+")").Scan(&n); err != nil {
			return 0, r.cat.check(fmt.Errorf("databus: postgres: estimate the rows of %s: %w", t.Name, err))
		}
		return uint64(float64(n) * 100 / pct), nil
	}
	var plan string
	if err := conn.QueryRow(ctx, "EXPLAIN (FORMAT JSON) SELECT 1 FROM "+quoteTable(t.Name)).Scan(&plan); err != nil {
		return 0, r.cat.check(fmt.Errorf("databus: postgres: estimate the rows of %s: %w", t.Name, err))
	}
	var out []struct {
		Plan struct {
			Rows float64 `json:"Plan Rows"`
		} `json:"Plan"`
	}
	if err := json.Unmarshal([]byte(plan), &out); err != nil || len(out) != 1 {
		return 0, fmt.Errorf("databus: postgres: estimate the rows of %s: unexpected plan %.200q", t.Name, plan)
	}
	return uint64(max(out[0].Plan.Rows, 0)), nil
}

// ---- watermarks ----

// WriteWatermark upserts (slot, mark) into the watermark table `table`
// ("<schema>._databus_watermark", for a schema of Config.Tables: the
// capture delivers those) in a transaction of its own, and returns once it
// is committed. The first call for a table makes sure the capture will see
// it: it creates the table (slot text PRIMARY KEY, mark text NOT NULL) when
// missing, checks its definition, and adds it to the publication unless
// that is FOR ALL TABLES (refusing, with the statement to run, when
// Config.CreatePublication is false). The publication must exist: the
// relay creates it when it opens.
func (r *ChunkReader) WriteWatermark(ctx context.Context, table, slot, mark string) error {
	ns, rel, _ := strings.Cut(table, ".")
	switch {
	case rel != source.WatermarkTableName || ns == "":
		return fmt.Errorf("databus: postgres: seed: watermark table %q is not of the form <schema>.%s", table, source.WatermarkTableName)
	case !r.marks[table]:
		return fmt.Errorf("databus: postgres: seed: watermark table %s is in none of the schemas of Config.Tables, whose watermark tables the capture delivers", table)
	case slot == "":
		return errors.New("databus: postgres: seed: empty watermark slot")
	}
	conn, err := r.conn(ctx)
	if err != nil {
		return err
	}
	r.rollback(conn.PgConn()) // a transaction of its own, whatever failed before
	stmt := "INSERT INTO " + quoteTable(table) + " (slot, mark) VALUES ($1, $2) ON CONFLICT (slot) DO UPDATE SET mark = EXCLUDED.mark"
	for attempt := 0; ; attempt++ {
		if !r.ready[table] {
			if err := r.prepareWatermark(ctx, conn, table); err != nil {
				return err
			}
			r.ready[table] = true
		}
		_, err := conn.PgConn().ExecParams(ctx, stmt, [][]byte{[]byte(slot), []byte(mark)}, nil, nil, nil).Close()
		var pgErr *pgconn.PgError
		if attempt == 0 && errors.As(err, &pgErr) && (pgErr.Code == "42P01" || pgErr.Code == "42703" || pgErr.Code == "42P10") {
			// Dropped or altered since it was prepared: prepare it again.
			r.ready[table] = false
			continue
		}
		if err != nil {
			return r.cat.check(fmt.Errorf("databus: postgres: seed: write watermark %s: %w", table, err))
		}
		return nil
	}
}

// prepareWatermark creates the watermark table when missing, checks it and
// makes sure the publication publishes it.
func (r *ChunkReader) prepareWatermark(ctx context.Context, conn *pgx.Conn, table string) error {
	qt := quoteTable(table)
	create := "CREATE TABLE IF NOT EXISTS " + qt + " (slot text PRIMARY KEY, mark text NOT NULL)"
	for attempt := 0; ; attempt++ {
		_, err := conn.Exec(ctx, create)
		var pgErr *pgconn.PgError
		if attempt == 0 && errors.As(err, &pgErr) && (pgErr.Code == "23505" || pgErr.Code == "42P07") {
			continue // another writer created it at the same moment
		}
		if err != nil {
			return r.cat.check(fmt.Errorf("databus: postgres: seed: %s: %w", create, err))
		}
		break
	}
	ns, rel, _ := strings.Cut(table, ".")
	live, ok, err := r.describe(ctx, conn, ns, rel)
	if err != nil {
		return err
	}
	want := []colSpec{{name: "slot", oid: pgtype.TextOID, typmod: -1}, {name: "mark", oid: pgtype.TextOID, typmod: -1}}
	if !ok || live.kind != "r" || !slices.Equal(live.cols, want) || !slices.Equal(live.order, []string{"slot"}) {
		return fmt.Errorf("databus: postgres: seed: %s exists but is not (slot text PRIMARY KEY, mark text NOT NULL) with REPLICA IDENTITY DEFAULT: drop it and let the seed create it", table)
	}
	pub := r.cfg.Publication
	qpub := pgx.Identifier{pub}.Sanitize()
	var all, ins, upd bool
	err = conn.QueryRow(ctx, `SELECT puballtables, pubinsert, pubupdate FROM pg_catalog.pg_publication WHERE pubname = $1`, pub).Scan(&all, &ins, &upd)
	if errors.Is(err, pgx.ErrNoRows) {
		return fmt.Errorf("databus: postgres: seed: publication %q does not exist: the relay creates it when it opens; start the relay before seeding", pub)
	}
	if err != nil {
		return r.cat.check(fmt.Errorf("databus: postgres: look up publication %q: %w", pub, err))
	}
	if !ins || !upd {
		return &SettingError{Setting: "publication " + pub, Value: "not publishing inserts and updates",
			Fix: "run ALTER PUBLICATION " + qpub + " SET (publish = 'insert, update, delete, truncate')"}
	}
	if all {
		return nil
	}
	var member bool
	if err := conn.QueryRow(ctx, `SELECT EXISTS (SELECT FROM pg_catalog.pg_publication_tables
		WHERE pubname = $1 AND schemaname = $2 AND tablename = $3)`, pub, ns, rel).Scan(&member); err != nil {
		return r.cat.check(fmt.Errorf("databus: postgres: read the tables of publication %q: %w", pub, err))
	}
	if !member {
		stmt := "ALTER PUBLICATION " + qpub + " ADD TABLE " + qt
		if !r.cfg.createPublication() {
			return fmt.Errorf("databus: postgres: seed: publication %q does not include the watermark table %s, so the relay would not see the seed's watermarks; run %s", pub, table, stmt)
		}
		_, err := conn.Exec(ctx, stmt)
		var pgErr *pgconn.PgError
		if err != nil && !(errors.As(err, &pgErr) && pgErr.Code == "42710") { // 42710: added meanwhile
			return r.cat.check(fmt.Errorf("databus: postgres: seed: %s: %w (the role must own the publication)", stmt, err))
		}
	}
	if r.cat.version >= 150000 {
		var filtered bool
		if err := conn.QueryRow(ctx, `SELECT EXISTS (SELECT FROM pg_catalog.pg_publication_rel pr
			JOIN pg_catalog.pg_publication p ON p.oid = pr.prpubid
			WHERE p.pubname = $1 AND pr.prrelid = $2::regclass AND (pr.prqual IS NOT NULL OR pr.prattrs IS NOT NULL))`, pub, qt).Scan(&filtered); err != nil {
			return r.cat.check(fmt.Errorf("databus: postgres: read the tables of publication %q: %w", pub, err))
		}
		if filtered {
			return &SettingError{Setting: "publication " + pub, Value: "filtering " + table + " (a row filter or column list)",
				Fix: "publish the table whole: ALTER PUBLICATION " + qpub + " SET TABLE ... without WHERE or a column list"}
		}
	}
	return nil
}
