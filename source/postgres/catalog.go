package postgres

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/databus-go/databus/schema"
)

// UnchangedColumn is the column the adapter appends to every table's
// schema: the Avro field names of the columns whose value the image does
// not carry because PostgreSQL did not log it (an unchanged TOASTed value
// in an UPDATE; see the package doc, "TOAST"). Those columns are null in the
// image. It is an Avro array of strings, empty for almost every event.
const UnchangedColumn = "_databus_unchanged"

// unchangedSourceType is the UnchangedColumn's doc in the Avro schema.
const unchangedSourceType = "databus: columns not carried by this image (unchanged TOAST values), null here; keep their previous value"

// catalog reads the server's catalog on a normal (non-replication)
// connection, opened on first use and again after a failure. It is used by
// one goroutine at a time (Open, then Run's capture goroutine); mu only
// makes Close safe.
type catalog struct {
	cfg     *pgx.ConnConfig
	version int // server_version_num, set by Open

	mu    sync.Mutex
	conn  *pgx.Conn
	types map[uint32]colType // resolved non-built-in types
}

func newCatalog(cfg *pgx.ConnConfig) *catalog {
	return &catalog{cfg: cfg, types: map[uint32]colType{}}
}

// get returns the connection, connecting when there is none.
func (c *catalog) get(ctx context.Context) (*pgx.Conn, error) {
	c.mu.Lock()
	conn := c.conn
	c.mu.Unlock()
	if conn != nil && !conn.IsClosed() {
		return conn, nil
	}
	conn, err := pgx.ConnectConfig(ctx, c.cfg)
	if err != nil {
		return nil, fmt.Errorf("databus: postgres: connect to %s: %w", describeConn(c.cfg), err)
	}
	c.mu.Lock()
	old := c.conn
	c.conn = conn
	c.mu.Unlock()
	if old != nil {
		closeQuietly(old)
	}
	return conn, nil
}

// check drops the connection after an error that may have broken it.
func (c *catalog) check(err error) error {
	if err == nil {
		return nil
	}
	c.mu.Lock()
	conn := c.conn
	if conn != nil && conn.IsClosed() {
		c.conn = nil
	}
	c.mu.Unlock()
	return err
}

func (c *catalog) close() {
	c.mu.Lock()
	conn := c.conn
	c.conn = nil
	c.mu.Unlock()
	if conn != nil {
		closeQuietly(conn)
	}
}

func closeQuietly(conn *pgx.Conn) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	_ = conn.Close(ctx)
}

func describeConn(cfg *pgx.ConnConfig) string {
	return fmt.Sprintf("%s:%d/%s as %s", cfg.Host, cfg.Port, cfg.Database, cfg.User)
}

// typeOf returns how values of type oid are decoded: built-in types from
// the adapter's tables; enums as text; domains as their base type; arrays
// of decodable element types (comma-delimited) as arrays; anything else as
// its text.
func (c *catalog) typeOf(ctx context.Context, oid uint32) (colType, error) {
	return c.typeOfDepth(ctx, oid, 0)
}

func (c *catalog) typeOfDepth(ctx context.Context, oid uint32, depth int) (colType, error) {
	if t, ok := builtinType(oid); ok {
		return t, nil
	}
	c.mu.Lock()
	t, ok := c.types[oid]
	c.mu.Unlock()
	if ok {
		return t, nil
	}
	t = colType{kind: kString}
	if depth < 8 {
		conn, err := c.get(ctx)
		if err != nil {
			return t, err
		}
		var typtype, category, delim string
		var elem, base uint32
		// An array type is its element type's typarray; int2vector and
		// friends (category A too) are not, and print otherwise.
		err = conn.QueryRow(ctx, `SELECT t.typtype::text, t.typcategory::text,
				CASE WHEN e.typarray = t.oid THEN t.typelem ELSE 0 END, t.typbasetype, coalesce(e.typdelim::text, ',')
			FROM pg_catalog.pg_type t LEFT JOIN pg_catalog.pg_type e ON e.oid = t.typelem
			WHERE t.oid = $1`, oid).Scan(&typtype, &category, &elem, &base, &delim)
		switch {
		case errors.Is(err, pgx.ErrNoRows):
			// A type dropped since: its text it is.
		case err != nil:
			return t, c.check(fmt.Errorf("databus: postgres: look up type %d: %w", oid, err))
		case typtype == "d":
			if t, err = c.typeOfDepth(ctx, base, depth+1); err != nil {
				return t, err
			}
		case category == "A" && elem != 0 && delim == ",":
			e, err := c.typeOfDepth(ctx, elem, depth+1)
			if err != nil {
				return t, err
			}
			if !e.array {
				t = colType{kind: e.kind, array: true}
			}
		}
	}
	c.mu.Lock()
	c.types[oid] = t
	c.mu.Unlock()
	return t, nil
}

// formatTypes returns format_type(oid, typmod) of each column: the type as
// the server spells it, the column's SourceType.
func (c *catalog) formatTypes(ctx context.Context, oids []uint32, mods []int32) ([]string, error) {
	conn, err := c.get(ctx)
	if err != nil {
		return nil, err
	}
	o := make([]int64, len(oids))
	for i, v := range oids {
		o[i] = int64(v)
	}
	rows, err := conn.Query(ctx, `SELECT pg_catalog.format_type(u.o::oid, u.m)
		FROM unnest($1::int8[], $2::int4[]) WITH ORDINALITY AS u(o, m, n) ORDER BY u.n`, o, mods)
	if err != nil {
		return nil, c.check(fmt.Errorf("databus: postgres: format types: %w", err))
	}
	out, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return nil, c.check(fmt.Errorf("databus: postgres: format types: %w", err))
	}
	if len(out) != len(oids) {
		return nil, fmt.Errorf("databus: postgres: format types: %d names for %d types", len(out), len(oids))
	}
	return out, nil
}

// primaryKey returns the primary key columns of relation relid in column
// order, or none.
func (c *catalog) primaryKey(ctx context.Context, relid uint32) ([]string, error) {
	return c.indexColumns(ctx, relid, "indisprimary")
}

func (c *catalog) indexColumns(ctx context.Context, relid uint32, which string) ([]string, error) {
	conn, err := c.get(ctx)
	if err != nil {
		return nil, err
	}
	// Only the index's key columns: those of an INCLUDE clause are not
	// part of the key (pgoutput does not flag them either).
	nkey := "indnkeyatts"
	if c.version != 0 && c.version < 110000 {
		nkey = "indnatts" // no INCLUDE before PostgreSQL 11
	}
	rows, err := conn.Query(ctx, `SELECT a.attname::text FROM pg_catalog.pg_index i
		JOIN pg_catalog.pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY((i.indkey::int2[])[0:i.`+nkey+`-1])
		WHERE i.indrelid = $1 AND i.`+which+` ORDER BY a.attnum`, relid)
	if err != nil {
		return nil, c.check(fmt.Errorf("databus: postgres: read the key of relation %d: %w", relid, err))
	}
	names, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return nil, c.check(fmt.Errorf("databus: postgres: read the key of relation %d: %w", relid, err))
	}
	return names, nil
}

// catalogTable is a table as the catalog describes it now.
type catalogTable struct {
	relid     uint32
	kind      string // relkind
	replident string // relreplident: d, n, f, i
	cols      []colSpec
	key       []string // replica identity columns (the primary key for FULL), column order
}

// colSpec is a column as a relation message or the catalog describes it.
type colSpec struct {
	name   string
	oid    uint32
	typmod int32
}

// describeTable reads a table's columns and key; ok=false when it does not
// exist.
func (c *catalog) describeTable(ctx context.Context, ns, name string) (t catalogTable, ok bool, err error) {
	conn, err := c.get(ctx)
	if err != nil {
		return t, false, err
	}
	err = conn.QueryRow(ctx, `SELECT c.oid, c.relkind::text, c.relreplident::text FROM pg_catalog.pg_class c
		JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = $1 AND c.relname = $2`,
		ns, name).Scan(&t.relid, &t.kind, &t.replident)
	if errors.Is(err, pgx.ErrNoRows) {
		return t, false, nil
	}
	if err != nil {
		return t, false, c.check(fmt.Errorf("databus: postgres: look up table %s.%s: %w", ns, name, err))
	}
	generated := ""
	if c.version >= 120000 {
		generated = " AND a.attgenerated = ''"
	}
	rows, err := conn.Query(ctx, `SELECT a.attname::text, a.atttypid, a.atttypmod FROM pg_catalog.pg_attribute a
		WHERE a.attrelid = $1 AND a.attnum > 0 AND NOT a.attisdropped`+generated+` ORDER BY a.attnum`, t.relid)
	if err != nil {
		return t, false, c.check(fmt.Errorf("databus: postgres: read the columns of %s.%s: %w", ns, name, err))
	}
	t.cols, err = pgx.CollectRows(rows, func(r pgx.CollectableRow) (colSpec, error) {
		var cs colSpec
		err := r.Scan(&cs.name, &cs.oid, &cs.typmod)
		return cs, err
	})
	if err != nil {
		return t, false, c.check(fmt.Errorf("databus: postgres: read the columns of %s.%s: %w", ns, name, err))
	}
	switch t.replident {
	case "d", "f":
		t.key, err = c.primaryKey(ctx, t.relid)
	case "i":
		t.key, err = c.indexColumns(ctx, t.relid, "indisreplident")
	}
	return t, true, err
}

// buildTable is the schema.Table (without id and version) of a table with
// columns cols and key columns key (column order; none means the whole
// row). Open (from the catalog) and the stream (from relation messages)
// build equal tables for equal definitions: that is what lets them agree on
// versions.
func (c *catalog) buildTable(ctx context.Context, name string, cols []colSpec, key []string) (schema.Table, error) {
	oids := make([]uint32, len(cols))
	mods := make([]int32, len(cols))
	for i, cs := range cols {
		oids[i], mods[i] = cs.oid, cs.typmod
	}
	names, err := c.formatTypes(ctx, oids, mods)
	if err != nil {
		return schema.Table{}, err
	}
	t := schema.Table{Name: name, Columns: make([]schema.Column, 0, len(cols)+1)}
	for i, cs := range cols {
		ct, err := c.typeOf(ctx, cs.oid)
		if err != nil {
			return schema.Table{}, err
		}
		t.Columns = append(t.Columns, schema.Column{Name: cs.name, Avro: ct.avroType(), Nullable: true, SourceType: names[i]})
	}
	t.Columns = append(t.Columns, schema.Column{Name: UnchangedColumn, Avro: []byte(`{"type":"array","items":"string"}`), SourceType: unchangedSourceType})
	// A key names columns the table has (FULL identity's primary key
	// looked up in today's catalog might not): otherwise the whole row.
	for _, k := range key {
		if t.Column(k) < 0 || k == UnchangedColumn {
			key = nil
			break
		}
	}
	if len(key) == 0 {
		for _, cs := range cols {
			key = append(key, cs.name)
		}
	}
	t.Key = append([]string(nil), key...)
	return t, nil
}
