package sqlite

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"strings"

	"github.com/databus-go/databus/event"
	"github.com/databus-go/databus/schema"
)

// formatVersion guards the layout of the _databus_ tables. A database whose
// recorded format is newer than this is refused rather than misread.
const formatVersion = 1

// Change-log entry kinds (column kind of _databus_changelog).
const (
	kindRow    = 1 // a row change written by a capture trigger
	kindMarker = 2 // closes the window of every entry after the previous marker
	kindSchema = 3 // a table's new schema version; its rows follow it
)

// Change-log ops of row entries, as the triggers write them.
const (
	opInsert = 1
	opUpdate = 2
	opDelete = 3
)

// setupSQL creates the source's bookkeeping tables. Running it again is a
// no-op (and, because nothing is created, leaves schema_version alone).
var setupSQL = []string{
	`CREATE TABLE IF NOT EXISTS _databus_changelog(seq INTEGER PRIMARY KEY AUTOINCREMENT, kind INTEGER NOT NULL, tbl TEXT, op INTEGER, ver INTEGER, ts INTEGER, new TEXT, old TEXT)`,
	`CREATE TABLE IF NOT EXISTS _databus_sources(id INTEGER PRIMARY KEY, name TEXT UNIQUE NOT NULL, version INTEGER NOT NULL, definition TEXT NOT NULL)`,
	`CREATE TABLE IF NOT EXISTS _databus_schemas(id INTEGER NOT NULL, version INTEGER NOT NULL, definition TEXT NOT NULL, PRIMARY KEY(id, version)) WITHOUT ROWID`,
	`CREATE TABLE IF NOT EXISTS _databus_state(name TEXT PRIMARY KEY, value INTEGER NOT NULL) WITHOUT ROWID`,
}

// State keys in _databus_state.
const (
	stateFormat   = "format"
	stateReleased = "released" // highest position passed to Release; entries <= it are gone
)

// rowidColumn is the name of the column that carries the rowid of a table
// without a primary key.
const rowidColumn = "_rowid"

// querier is what *sql.DB, *sql.Conn and *sql.Tx have in common.
type querier interface {
	ExecContext(ctx context.Context, query string, args ...any) (sql.Result, error)
	QueryContext(ctx context.Context, query string, args ...any) (*sql.Rows, error)
	QueryRowContext(ctx context.Context, query string, args ...any) *sql.Row
}

// ErrUnknownTable is wrapped by the error Open (or Run, when a table is
// dropped or renamed while captured) returns for a configured table that is
// not an ordinary table of schema main.
var ErrUnknownTable = errors.New("databus: sqlite: unknown table")

// kind is how values of a column are converted to its Avro type.
type kind uint8

const (
	kLong kind = iota + 1
	kDouble
	kString
	kBytes
	kBool
)

var kindAvro = map[kind]string{kLong: "long", kDouble: "double", kString: "string", kBytes: "bytes", kBool: "boolean"}

func (k kind) String() string { return kindAvro[k] }

func kindOf(avro json.RawMessage) (kind, bool) {
	var name string
	if json.Unmarshal(avro, &name) != nil {
		return 0, false
	}
	for k, n := range kindAvro {
		if n == name {
			return k, true
		}
	}
	return 0, false
}

// affinity returns the column affinity SQLite gives a declared type
// (https://sqlite.org/datatype3.html#determination_of_column_affinity).
func affinity(declared string) string {
	u := strings.ToUpper(declared)
	switch {
	case strings.Contains(u, "INT"):
		return "INTEGER"
	case strings.Contains(u, "CHAR"), strings.Contains(u, "CLOB"), strings.Contains(u, "TEXT"):
		return "TEXT"
	case strings.Contains(u, "BLOB"), strings.TrimSpace(u) == "":
		return "BLOB"
	case strings.Contains(u, "REAL"), strings.Contains(u, "FLOA"), strings.Contains(u, "DOUB"):
		return "REAL"
	}
	return "NUMERIC"
}

// columnKind maps a declared column type to the Avro type its values are
// captured as. See the type table in the package documentation.
func columnKind(declared string, strict bool) kind {
	base := strings.ToUpper(strings.TrimSpace(declared))
	if i := strings.IndexByte(base, '('); i >= 0 {
		base = strings.TrimSpace(base[:i])
	}
	if strict && base == "ANY" {
		return kBytes // ANY has no affinity in a STRICT table
	}
	switch affinity(declared) {
	case "INTEGER":
		return kLong
	case "TEXT":
		return kString
	case "BLOB":
		return kBytes
	case "REAL":
		return kDouble
	}
	if base == "BOOL" || base == "BOOLEAN" {
		return kBool
	}
	return kString // NUMERIC, DECIMAL, DATE, ...: exact canonical text
}

// layout is a table's definition as read from the catalog, with what the
// triggers need to capture it.
type layout struct {
	name  string       // the table name as the catalog spells it
	table schema.Table // ID and Version unset
	// exprs[i] is the SQL expression, relative to NEW. or OLD., that
	// reads column i of table.
	exprs []string
}

// inspect reads the current definition of table name from the catalog.
func inspect(ctx context.Context, q querier, name string) (*layout, error) {
	var canon, typ string
	var withoutRowid, strict bool
	err := q.QueryRowContext(ctx, `SELECT name, type, wr, strict FROM pragma_table_list(?1) WHERE schema = 'main'`, name).
		Scan(&canon, &typ, &withoutRowid, &strict)
	if errors.Is(err, sql.ErrNoRows) {
		return nil, fmt.Errorf("%w %q: no such table in schema main", ErrUnknownTable, name)
	}
	if err != nil {
		return nil, fmt.Errorf("databus: sqlite: inspect table %q: %w", name, err)
	}
	if typ != "table" {
		return nil, fmt.Errorf("%w %q: it is a %s, not an ordinary table", ErrUnknownTable, name, typ)
	}
	if strings.HasPrefix(asciiLower(canon), reservedPrefix) {
		return nil, fmt.Errorf("%w %q: the %s prefix is reserved", ErrUnknownTable, canon, reservedPrefix)
	}
	rows, err := q.QueryContext(ctx, `SELECT name, type, "notnull", pk, hidden FROM pragma_table_xinfo(?1, 'main') ORDER BY cid`, canon)
	if err != nil {
		return nil, fmt.Errorf("databus: sqlite: columns of %q: %w", canon, err)
	}
	defer rows.Close()
	type col struct {
		name, typ string
		notNull   bool
		pk        int
	}
	var cols []col
	npk := 0
	for rows.Next() {
		var c col
		var hidden int
		if err := rows.Scan(&c.name, &c.typ, &c.notNull, &c.pk, &hidden); err != nil {
			return nil, fmt.Errorf("databus: sqlite: columns of %q: %w", canon, err)
		}
		if hidden == 1 { // hidden column of a virtual table
			continue
		}
		if c.pk > 0 {
			npk++
		}
		cols = append(cols, c)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("databus: sqlite: columns of %q: %w", canon, err)
	}
	l := &layout{name: canon, table: schema.Table{Name: "main." + canon}}
	if npk == 0 {
		// Keyed by rowid, exposed as a leading column.
		expr := ""
		for _, alias := range []string{"rowid", "_rowid_", "oid"} {
			shadowed := false
			for _, c := range cols {
				shadowed = shadowed || asciiLower(c.name) == alias
			}
			if !shadowed {
				expr = alias
				break
			}
		}
		if expr == "" {
			return nil, fmt.Errorf("databus: sqlite: table %q has no primary key and its rowid is shadowed by columns named rowid, _rowid_ and oid", canon)
		}
		for _, c := range cols {
			if asciiLower(c.name) == rowidColumn {
				return nil, fmt.Errorf("databus: sqlite: table %q has no primary key and a column named %s, which is the name databus gives its rowid; add a primary key", canon, rowidColumn)
			}
		}
		l.table.Columns = append(l.table.Columns, schema.Column{Name: rowidColumn, Avro: schema.Primitive("long"), SourceType: "ROWID"})
		l.table.Key = []string{rowidColumn}
		l.exprs = append(l.exprs, expr)
	} else {
		l.table.Key = make([]string, npk)
	}
	for _, c := range cols {
		k := columnKind(c.typ, strict)
		// The rowid alias and the key of a WITHOUT ROWID table are never
		// NULL; other primary key columns of rowid tables may be, unless
		// declared NOT NULL (a SQLite legacy).
		alias := c.pk > 0 && npk == 1 && !withoutRowid && strings.EqualFold(strings.TrimSpace(c.typ), "INTEGER")
		nullable := !c.notNull && !alias && !(c.pk > 0 && withoutRowid)
		l.table.Columns = append(l.table.Columns, schema.Column{Name: c.name, Avro: schema.Primitive(k.String()), Nullable: nullable, SourceType: c.typ})
		l.exprs = append(l.exprs, quoteIdent(c.name))
		if c.pk > 0 {
			if c.pk > npk || l.table.Key[c.pk-1] != "" {
				return nil, fmt.Errorf("databus: sqlite: table %q: inconsistent primary key positions", canon)
			}
			l.table.Key[c.pk-1] = c.name
		}
	}
	if err := l.table.Validate(); err != nil {
		return nil, fmt.Errorf("databus: sqlite: table %q cannot be captured: %w", canon, err)
	}
	return l, nil
}

// sameDefinition reports whether two versions of a table have the same
// columns and key; only then do they share a version number.
func sameDefinition(a, b *schema.Table) bool {
	ja, _ := json.Marshal([]any{a.Columns, a.Key})
	jb, _ := json.Marshal([]any{b.Columns, b.Key})
	return string(ja) == string(jb)
}

func quoteIdent(s string) string { return `"` + strings.ReplaceAll(s, `"`, `""`) + `"` }
func quoteText(s string) string  { return `'` + strings.ReplaceAll(s, `'`, `''`) + `'` }

// tsExpr is the trigger's timestamp: the statement's time, in ns since the
// Unix epoch, with SQLite's millisecond resolution. julianday('now') is a
// whole number of milliseconds converted to days, so rounding recovers it
// exactly (it never runs ahead of the marker that closes the window). The
// triggers run in the writers' SQLite, so they use only functions every
// SQLite with built-in JSON (3.38+) has: unixepoch('subsec') needs 3.42.
const tsExpr = `CAST(round((julianday('now') - 2440587.5) * 86400000) AS INTEGER) * 1000000`

// imageExpr is the JSON row image of ref (NEW or OLD): one array element
// per column, unambiguous about the storage class:
//
//	null     NULL
//	integer  a JSON number (full int64)
//	real     "r" + printf('%!.17g'), which round-trips every double
//	text     "t" + the text (JSON-escaped by json_array; bytes kept as is)
//	blob     "b" + hex
func imageExpr(ref string, exprs []string) string {
	var b strings.Builder
	b.WriteString("json_array(")
	for i, e := range exprs {
		if i > 0 {
			b.WriteString(", ")
		}
		v := ref + "." + e
		fmt.Fprintf(&b, "CASE typeof(%[1]s) WHEN 'integer' THEN %[1]s WHEN 'real' THEN 'r'||printf('%%!.17g',%[1]s) WHEN 'text' THEN 't'||%[1]s WHEN 'blob' THEN 'b'||hex(%[1]s) END", v)
	}
	b.WriteString(")")
	return b.String()
}

// trigger is one capture trigger: its name and the exact SQL that creates
// it. SQLite stores that SQL verbatim, which is how an outdated or edited
// trigger is detected.
type trigger struct{ name, sql string }

func triggers(l *layout, version uint16) []trigger {
	tbl := quoteIdent(l.name)
	head := func(suffix, ev string) (string, string) {
		name := reservedPrefix + l.name + "_" + suffix
		return name, fmt.Sprintf("CREATE TRIGGER %s AFTER %s ON %s FOR EACH ROW BEGIN ", quoteIdent(name), ev, tbl)
	}
	ins := fmt.Sprintf("INSERT INTO _databus_changelog(kind, tbl, op, ver, ts, new, old) VALUES(%d, %s, %%d, %d, %s, %%s, %%s); END",
		kindRow, quoteText(l.name), version, tsExpr)
	newImg, oldImg := imageExpr("NEW", l.exprs), imageExpr("OLD", l.exprs)
	var out []trigger
	n, h := head("ins", "INSERT")
	out = append(out, trigger{n, h + fmt.Sprintf(ins, opInsert, newImg, "NULL")})
	n, h = head("upd", "UPDATE")
	out = append(out, trigger{n, h + fmt.Sprintf(ins, opUpdate, newImg, oldImg)})
	n, h = head("del", "DELETE")
	out = append(out, trigger{n, h + fmt.Sprintf(ins, opDelete, "NULL", oldImg)})
	return out
}

// syncTable brings the recorded definition of a table and its triggers up to
// date with the catalog. It must run inside a write transaction, so that the
// definition it reads is the one the triggers are built for and no write to
// the table falls between the version change and the new triggers. When the
// definition changed (or the table is new) it records a new version, whose
// schema entry in the change log precedes every row the new triggers write.
func syncTable(ctx context.Context, tx *sql.Tx, name string, now int64) (l *layout, id uint32, version uint16, err error) {
	l, err = inspect(ctx, tx, name)
	if err != nil {
		return nil, 0, 0, err
	}
	t := l.table
	var storedID int64
	var storedVersion int64
	var storedDef string
	err = tx.QueryRowContext(ctx, `SELECT id, version, definition FROM _databus_sources WHERE name = ?`, t.Name).Scan(&storedID, &storedVersion, &storedDef)
	created := false
	switch {
	case errors.Is(err, sql.ErrNoRows):
		res, err := tx.ExecContext(ctx, `INSERT INTO _databus_sources(name, version, definition) VALUES(?, 1, '')`, t.Name)
		if err != nil {
			return nil, 0, 0, fmt.Errorf("databus: sqlite: register %s: %w", t.Name, err)
		}
		storedID, err = res.LastInsertId()
		if err != nil {
			return nil, 0, 0, err
		}
		storedVersion, created = 1, true
	case err != nil:
		return nil, 0, 0, fmt.Errorf("databus: sqlite: read definition of %s: %w", t.Name, err)
	default:
		var old schema.Table
		if err := json.Unmarshal([]byte(storedDef), &old); err != nil {
			return nil, 0, 0, fmt.Errorf("databus: sqlite: stored definition of %s is corrupt: %w", t.Name, err)
		}
		if !sameDefinition(&old, &t) {
			if storedVersion >= 1<<16-1 {
				return nil, 0, 0, fmt.Errorf("databus: sqlite: %s has reached the last schema version (%d)", t.Name, storedVersion)
			}
			storedVersion, created = storedVersion+1, true
		}
	}
	if storedID <= 0 || storedID > 1<<32-1 {
		return nil, 0, 0, fmt.Errorf("databus: sqlite: source id %d of %s out of range", storedID, t.Name)
	}
	id, version = uint32(storedID), uint16(storedVersion)
	if created {
		t.ID, t.Version = id, version
		def, err := json.Marshal(t)
		if err != nil {
			return nil, 0, 0, err
		}
		for _, q := range []struct {
			sql  string
			args []any
		}{
			{`UPDATE _databus_sources SET version = ?, definition = ? WHERE id = ?`, []any{version, string(def), id}},
			{`INSERT INTO _databus_schemas(id, version, definition) VALUES(?, ?, ?)`, []any{id, version, string(def)}},
			{`INSERT INTO _databus_changelog(kind, tbl, ver, ts) VALUES(?, ?, ?, ?)`, []any{kindSchema, l.name, version, now}},
		} {
			if _, err := tx.ExecContext(ctx, q.sql, q.args...); err != nil {
				return nil, 0, 0, fmt.Errorf("databus: sqlite: record version %d of %s: %w", version, t.Name, err)
			}
		}
	}
	for _, tr := range triggers(l, version) {
		var have string
		err := tx.QueryRowContext(ctx, `SELECT sql FROM sqlite_schema WHERE type = 'trigger' AND name = ?`, tr.name).Scan(&have)
		if err == nil && have == tr.sql {
			continue
		}
		if err != nil && !errors.Is(err, sql.ErrNoRows) {
			return nil, 0, 0, fmt.Errorf("databus: sqlite: read trigger %s: %w", tr.name, err)
		}
		if _, err := tx.ExecContext(ctx, `DROP TRIGGER IF EXISTS `+quoteIdent(tr.name)); err != nil {
			return nil, 0, 0, fmt.Errorf("databus: sqlite: drop trigger %s: %w", tr.name, err)
		}
		if _, err := tx.ExecContext(ctx, tr.sql); err != nil {
			return nil, 0, 0, fmt.Errorf("databus: sqlite: create trigger %s: %w", tr.name, err)
		}
	}
	return l, id, version, nil
}

// loadVersions reads every recorded version of source id.
func loadVersions(ctx context.Context, q querier, id uint32) (map[uint16]*version, error) {
	rows, err := q.QueryContext(ctx, `SELECT version, definition FROM _databus_schemas WHERE id = ? ORDER BY version`, id)
	if err != nil {
		return nil, fmt.Errorf("databus: sqlite: read schema versions of source %d: %w", id, err)
	}
	defer rows.Close()
	out := map[uint16]*version{}
	for rows.Next() {
		var v int64
		var def string
		if err := rows.Scan(&v, &def); err != nil {
			return nil, fmt.Errorf("databus: sqlite: read schema versions of source %d: %w", id, err)
		}
		ver, err := compileVersion([]byte(def))
		if err != nil {
			return nil, fmt.Errorf("databus: sqlite: version %d of source %d: %w", v, id, err)
		}
		if int64(ver.table.Version) != v || ver.table.ID != id {
			return nil, fmt.Errorf("databus: sqlite: version %d of source %d is recorded as %d/%d", v, id, ver.table.ID, ver.table.Version)
		}
		out[ver.table.Version] = ver
	}
	return out, rows.Err()
}

// version is one compiled schema version of a captured table: what decoding
// a row entry written by that version's triggers needs.
type version struct {
	table    schema.Table
	kinds    []kind
	nullable []bool
	key      []int // column indexes of the key, in key order
	change   event.SchemaChange
}

func compileVersion(def []byte) (*version, error) {
	v := &version{}
	if err := json.Unmarshal(def, &v.table); err != nil {
		return nil, fmt.Errorf("corrupt definition: %w", err)
	}
	if err := v.table.Validate(); err != nil {
		return nil, err
	}
	for _, c := range v.table.Columns {
		k, ok := kindOf(c.Avro)
		if !ok {
			return nil, fmt.Errorf("column %q has Avro type %s, which this version of databus does not capture", c.Name, c.Avro)
		}
		v.kinds = append(v.kinds, k)
		v.nullable = append(v.nullable, c.Nullable)
	}
	for _, k := range v.table.Key {
		v.key = append(v.key, v.table.Column(k))
	}
	v.change = event.SchemaChange{
		Source:  v.table.ID,
		Name:    v.table.Name,
		Version: v.table.Version,
		Key:     v.table.Key,
		Avro:    v.table.AvroSchema(),
	}
	return v, nil
}

// readState returns a value of _databus_state, 0 when absent.
func readState(ctx context.Context, q querier, name string) (uint64, error) {
	var v int64
	err := q.QueryRowContext(ctx, `SELECT value FROM _databus_state WHERE name = ?`, name).Scan(&v)
	if errors.Is(err, sql.ErrNoRows) {
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("databus: sqlite: read %s state: %w", name, err)
	}
	if v < 0 {
		return 0, fmt.Errorf("databus: sqlite: %s state is negative (%d)", name, v)
	}
	return uint64(v), nil
}

func writeState(ctx context.Context, q querier, name string, v uint64) error {
	_, err := q.ExecContext(ctx, `INSERT INTO _databus_state(name, value) VALUES(?, ?) ON CONFLICT(name) DO UPDATE SET value = excluded.value`, name, int64(v))
	if err != nil {
		return fmt.Errorf("databus: sqlite: write %s state: %w", name, err)
	}
	return nil
}
