package mysql

import (
	"bytes"
	"context"
	"database/sql"
	"database/sql/driver"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	mysqldriver "github.com/go-sql-driver/mysql"

	"github.com/databus-go/databus/event"
	"github.com/databus-go/databus/schema"
	"github.com/databus-go/databus/source"
)

// ErrBadCursor is wrapped by ReadChunk's error when the cursor is not one
// that ReadChunk returned for the table's current key: not valid JSON, of
// another format version, for other key columns, or made under another
// collation of a text key column (a collation changes the key order, so
// the seed must start again from the first row).
var ErrBadCursor = errors.New("databus: mysql: bad seed cursor")

// ErrNotSeedable is wrapped by ReadChunk's error when the table cannot be
// read faithfully by a ChunkReader: it has no primary key (nor a UNIQUE
// index over NOT NULL columns), or a column of a type whose SELECT value
// cannot be turned into what the binlog carries (MySQL's binary JSON,
// VECTOR). Retrying does not help.
var ErrNotSeedable = errors.New("databus: mysql: table cannot be seeded")

// watermarkWidth is the width, in characters, of the watermark table's
// columns: 191 utf8mb4 characters (764 bytes) fit the smallest InnoDB
// index key limit (767 bytes) of old row formats.
const watermarkWidth = 191

// ChunkReader reads the existing rows of a MariaDB/MySQL server's tables
// for a bootstrap seed, and writes the seed's watermarks. It implements
// source.ChunkReader; see "Seeding" in the package doc for what it
// guarantees. A ChunkReader is used by one goroutine at a time (Close
// excepted).
type ChunkReader struct {
	cfg Config
	db  *sql.DB

	// Owned by the goroutine using the reader (see source.ChunkReader).
	charsets   map[string]int       // character set → longest character; read at first use
	plans      map[string]*readPlan // by table name; a plan is dropped when its check fails
	watermarks map[string]bool      // watermark tables created (or found) by this reader
	rowBytes   map[string]int       // by table name: bytes of key and payload per row in the last chunk
}

var _ source.ChunkReader = (*ChunkReader)(nil)

// NewChunkReader returns a ChunkReader for the server cfg names. cfg is
// the adapter's Config, validated the same way (StateDir is required
// although the reader does not use it, so that one configuration serves
// both). It opens a connection pool of its own, of at most two connections,
// and connects on first use. The account needs SELECT on the seeded tables
// and information_schema, and CREATE, INSERT and UPDATE on the watermark
// tables.
func NewChunkReader(cfg Config) (*ChunkReader, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	cfg = cfg.withDefaults()
	dc := driverConfig(&cfg, slog.Default())
	// Raw bytes both ways: text values arrive in their column's character
	// set, as the binlog carries them, and cursor values go back as those
	// same bytes (the statements convert them explicitly). A fixed sql_mode
	// keeps CHAR values unpadded (no PAD_CHAR_TO_FULL_LENGTH) and zero
	// dates castable whatever the server's global mode. The largest sort
	// length makes a sort by a prefix-indexed key (TEXT) compare whole
	// values, so that it is the total order the keyset predicate assumes.
	dc.Params["character_set_client"] = "binary"
	dc.Params["character_set_connection"] = "binary"
	dc.Params["character_set_results"] = "binary"
	dc.Params["sql_mode"] = "'STRICT_ALL_TABLES,NO_ENGINE_SUBSTITUTION'"
	dc.Params["max_sort_length"] = "8388608"
	conn, err := mysqldriver.NewConnector(dc)
	if err != nil {
		return nil, fmt.Errorf("databus: mysql: %w", err)
	}
	db := sql.OpenDB(conn)
	db.SetMaxOpenConns(2)
	db.SetMaxIdleConns(2)
	db.SetConnMaxIdleTime(time.Minute)
	return &ChunkReader{cfg: cfg, db: db, plans: map[string]*readPlan{}, watermarks: map[string]bool{}, rowBytes: map[string]int{}}, nil
}

// Close closes the reader's connections. Calls in progress fail.
func (r *ChunkReader) Close() error { return r.db.Close() }

// splitName splits a logical source name "db.table" at its first dot, as
// the adapter builds them.
func splitName(name string) (db, table string, err error) {
	db, table, ok := strings.Cut(name, ".")
	if !ok || db == "" || table == "" || strings.ContainsRune(name, 0) {
		return "", "", fmt.Errorf("databus: mysql: table name %q is not of the form db.table", name)
	}
	return db, table, nil
}

// EstimateRows returns information_schema's TABLE_ROWS for t: InnoDB's
// estimate from its statistics, which can be off by tens of percent. It
// fails when the table does not exist.
func (r *ChunkReader) EstimateRows(ctx context.Context, t schema.Table) (uint64, error) {
	dbName, table, err := splitName(t.Name)
	if err != nil {
		return 0, err
	}
	var n sql.NullInt64
	err = r.db.QueryRowContext(ctx, "SELECT TABLE_ROWS FROM information_schema.TABLES WHERE TABLE_SCHEMA = ? AND TABLE_NAME = ?", dbName, table).Scan(&n)
	switch {
	case errors.Is(err, sql.ErrNoRows):
		return 0, fmt.Errorf("databus: mysql: estimate rows of %s: the table does not exist", t.Name)
	case err != nil:
		return 0, fmt.Errorf("databus: mysql: estimate rows of %s: %w", t.Name, err)
	case n.Int64 < 0:
		return 0, nil
	}
	return uint64(n.Int64), nil
}

// WriteWatermark upserts (slot, mark) into table ("db.table", normally
// db._databus_watermark), creating the table when missing:
//
//	CREATE TABLE IF NOT EXISTS db.table (slot VARCHAR(191) NOT NULL PRIMARY KEY,
//	  mark VARCHAR(191) NOT NULL) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin
//
// The upsert is one autocommit statement, so it is one transaction of the
// binlog, which the capture delivers as a window with an insert or update
// of the row at the point of its commit (the watermark table is always
// captured: see Config.Include). slot and mark must be valid UTF-8 of at
// most 191 characters. Writing the mark a slot already holds fails: it
// would change no row, and nothing would reach the binlog.
func (r *ChunkReader) WriteWatermark(ctx context.Context, table, slot, mark string) error {
	dbName, tbl, err := splitName(table)
	if err != nil {
		return err
	}
	for _, f := range [2][2]string{{"slot", slot}, {"mark", mark}} {
		if !utf8.ValidString(f[1]) || utf8.RuneCountInString(f[1]) > watermarkWidth {
			return fmt.Errorf("databus: mysql: watermark %s %q is not valid UTF-8 of at most %d characters", f[0], f[1], watermarkWidth)
		}
	}
	qt := quoteIdent(dbName) + "." + quoteIdent(tbl)
	create := func() error {
		_, err := r.db.ExecContext(ctx, "CREATE TABLE IF NOT EXISTS "+qt+" (slot VARCHAR("+strconv.Itoa(watermarkWidth)+") NOT NULL PRIMARY KEY, mark VARCHAR("+
			strconv.Itoa(watermarkWidth)+") NOT NULL) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin")
		if err != nil {
			return fmt.Errorf("databus: mysql: create watermark table %s: %w", table, err)
		}
		r.watermarks[table] = true
		return nil
	}
	if !r.watermarks[table] {
		if err := create(); err != nil {
			return err
		}
	}
	upsert := "INSERT INTO " + qt + " (slot, mark) VALUES (?, ?) ON DUPLICATE KEY UPDATE mark = VALUES(mark)"
	res, err := r.db.ExecContext(ctx, upsert, slot, mark)
	var my *mysqldriver.MySQLError
	if errors.As(err, &my) && my.Number == erNoSuchTable {
		// Dropped since this reader created it.
		if err := create(); err != nil {
			return err
		}
		res, err = r.db.ExecContext(ctx, upsert, slot, mark)
	}
	if err != nil {
		return fmt.Errorf("databus: mysql: write watermark %s=%s into %s: %w", slot, mark, table, err)
	}
	if n, err := res.RowsAffected(); err == nil && n == 0 {
		return fmt.Errorf("databus: mysql: watermark %s of %s already holds mark %q: writing it again changes no row, so it would not reach the binlog", slot, table, mark)
	}
	return nil
}

// erNoSuchTable is ER_NO_SUCH_TABLE.
const erNoSuchTable = 1146

// ---- plans ----

// readPlan is how to read one schema version of one table: the live
// definition (checked equal to the version), the statements and the
// conversions. Immutable.
type readPlan struct {
	tv tableVersion // def: the live catalog's definition; table: the version asked for
	db string       // database and table names
	tb string
	// sig identifies the catalog facts the plan depends on (definition,
	// collations, data types, key index); the check after each read
	// compares the catalog with it.
	sig   string
	cols  []colRead
	keys  []keyRead // in key order
	first string    // the statement of the first chunk: LIMIT ?
	after string    // the statement of later chunks: keyset predicate, LIMIT ?
}

// colRead is how a column is selected and converted.
type colRead struct {
	expr string // select expression
	def  *colDef
}

// keyRead is how a key column is paginated.
type keyRead struct {
	col   int    // index in the row
	name  string // column name
	form  string // cursor value form (see cursorKey)
	coll  string // collation of a text column
	param string // SQL expression of a cursor value: "?" or a conversion of it
}

// plan returns the read plan of t, from the cache or built from the
// catalog (which also checks the live definition against t).
func (r *ChunkReader) plan(ctx context.Context, t schema.Table) (*readPlan, error) {
	if p := r.plans[t.Name]; p != nil && p.tv.table.ID == t.ID && p.tv.table.Version == t.Version && tableDiff(p.tv.table, t) == "" {
		return p, nil
	}
	delete(r.plans, t.Name)
	dbName, tbl, err := splitName(t.Name)
	if err != nil {
		return nil, err
	}
	live, err := r.liveDef(ctx, t, dbName, tbl)
	if err != nil {
		return nil, err
	}
	p, err := newReadPlan(live, t)
	if err != nil {
		return nil, err
	}
	r.plans[t.Name] = p
	return p, nil
}

// liveDef reads t's table from the catalog and checks that its definition
// is t's.
func (r *ChunkReader) liveDef(ctx context.Context, t schema.Table, dbName, tbl string) (*tableDef, error) {
	if r.charsets == nil {
		_, charsets, err := readCollations(ctx, r.db)
		if err != nil {
			return nil, err
		}
		r.charsets = charsets
	}
	live, err := readTableDef(ctx, r.db, r.charsets, dbName, tbl)
	if err != nil {
		return nil, err
	}
	if live == nil {
		return nil, fmt.Errorf("%w: %s (version %d) no longer exists (dropped or renamed)", source.ErrSchemaMismatch, t.Name, t.Version)
	}
	if d := tableDiff(live.schemaTable(), t); d != "" {
		return nil, fmt.Errorf("%w: %s is not schema version %d: %s", source.ErrSchemaMismatch, t.Name, t.Version, d)
	}
	return live, nil
}

// check re-reads the catalog after a read: the rows are those of p's
// definition unless the catalog changed (a DDL committed between the
// previous check and the read would show here). On a failure the plan is
// dropped, so the next call starts from the catalog.
func (r *ChunkReader) check(ctx context.Context, p *readPlan) error {
	live, err := r.liveDef(ctx, p.tv.table, p.db, p.tb)
	if err == nil && signature(live) != p.sig {
		err = fmt.Errorf("%w: the catalog of %s changed while a chunk was read (collation, key index, or generated-column change)", source.ErrSchemaMismatch, p.tv.table.Name)
	}
	if err != nil {
		delete(r.plans, p.tv.table.Name)
	}
	return err
}

// tableDiff describes the first difference between the definitions of a
// and b (columns, their order and types, and the key), or "" when there is
// none. Ids, versions and names are not compared.
func tableDiff(a, b schema.Table) string {
	col := func(c schema.Column) string {
		var avro bytes.Buffer
		if json.Compact(&avro, c.Avro) != nil {
			avro.Reset()
			avro.Write(c.Avro)
		}
		null := ""
		if c.Nullable {
			null = " nullable"
		}
		return fmt.Sprintf("%q %s%s (avro %s)", c.Name, c.SourceType, null, avro.String())
	}
	for i := 0; i < len(a.Columns) && i < len(b.Columns); i++ {
		if ca, cb := col(a.Columns[i]), col(b.Columns[i]); ca != cb {
			return fmt.Sprintf("column %d is %s in the table, %s in the schema version", i+1, ca, cb)
		}
	}
	if len(a.Columns) != len(b.Columns) {
		return fmt.Sprintf("the table has %d columns, the schema version %d", len(a.Columns), len(b.Columns))
	}
	if strings.Join(a.Key, "\x00") != strings.Join(b.Key, "\x00") || len(a.Key) != len(b.Key) {
		return fmt.Sprintf("the key is (%s) in the table, (%s) in the schema version", strings.Join(a.Key, ", "), strings.Join(b.Key, ", "))
	}
	return ""
}

// signature identifies everything of a catalog definition a plan depends
// on.
func signature(d *tableDef) string {
	var b strings.Builder
	b.WriteString(defKey(d.schemaTable()))
	for i := range d.cols {
		c := &d.cols[i]
		fmt.Fprintf(&b, "\x00%s\x01%s\x01%s", c.cat.dataType, c.cat.collation, c.cat.extra)
	}
	b.WriteString("\x00" + d.keyIndex)
	return b.String()
}

// newReadPlan builds the plan of live, a definition equal to t.
func newReadPlan(live *tableDef, t schema.Table) (*readPlan, error) {
	p := &readPlan{tv: tableVersion{def: live, table: t}, db: live.db, tb: live.table, sig: signature(live)}
	if live.keyIndex == "" {
		return nil, fmt.Errorf("%w: %s has no primary key (nor a UNIQUE index over NOT NULL columns) to read it in key order", ErrNotSeedable, t.Name)
	}
	var sel []string
	for i := range live.cols {
		c := &live.cols[i]
		q := quoteIdent(c.name)
		expr := q
		switch {
		case c.kind == kJSON:
			return nil, fmt.Errorf("%w: %s column %s is MySQL's binary JSON, whose text the server renders differently from the binlog decoder", ErrNotSeedable, t.Name, c.name)
		case c.cat.dataType == "vector":
			return nil, fmt.Errorf("%w: %s column %s has type vector, which the reader does not support", ErrNotSeedable, t.Name, c.name)
		case c.kind == kEnum || c.kind == kSet:
			// The index or bit set, as the binlog has it: labels can be
			// ambiguous ('' is also the invalid value) and are in the
			// column's character set.
			expr = q + "+0"
		case c.cat.dataType == "uuid" || c.cat.dataType == "inet6" || c.cat.dataType == "inet4":
			// Their binary form, as the binlog has it, not their text.
			expr = "CAST(" + q + " AS BINARY(" + strconv.Itoa(c.size) + "))"
		}
		sel = append(sel, expr)
		p.cols = append(p.cols, colRead{expr: expr, def: c})
	}
	var order []string
	for _, k := range live.key {
		c := &live.cols[k]
		kr := keyRead{col: k, name: c.name, param: "?"}
		switch c.kind {
		case kInt:
			kr.form = "int"
			if c.unsigned {
				kr.form = "uint"
			}
		case kYear:
			kr.form = "int"
		case kBit:
			kr.form = "bit"
		case kEnum, kSet:
			// The labels fix what an index means: a cursor of other labels
			// is refused.
			kr.form = c.sourceType()
		case kFloat:
			kr.form = "float"
		case kDouble:
			kr.form = "double"
		case kDecimal:
			kr.form = "decimal"
			kr.param = fmt.Sprintf("CAST(? AS DECIMAL(%d,%d))", max(c.prec, 1), c.scale)
		case kDate:
			kr.form, kr.param = "date", "CAST(? AS DATE)"
		case kDatetime, kTimestamp:
			// TIMESTAMP compares as the session's (UTC) wall clock.
			kr.form, kr.param = "datetime", fmt.Sprintf("CAST(? AS DATETIME(%d))", c.scale)
		case kTime:
			kr.form, kr.param = "time", fmt.Sprintf("CAST(? AS TIME(%d))", c.scale)
		case kString:
			if c.cs.name == "binary" {
				kr.form = "bytes"
				break
			}
			if !isWord(c.cat.collation) || !isWord(c.cs.name) {
				return nil, fmt.Errorf("%w: %s key column %s has character set %q and collation %q, which the reader cannot name in SQL", ErrNotSeedable, t.Name, c.name, c.cs.name, c.cat.collation)
			}
			// The cursor's bytes are in the column's character set; the
			// comparison must use the column's collation, which orders the
			// index (and keeps the predicate sargable).
			kr.form, kr.coll = "text", c.cat.collation
			kr.param = "CONVERT(? USING " + c.cs.name + ") COLLATE " + c.cat.collation
		default:
			return nil, fmt.Errorf("%w: %s key column %s has type %s, which cannot be paginated", ErrNotSeedable, t.Name, c.name, c.sourceType())
		}
		p.keys = append(p.keys, kr)
		order = append(order, quoteIdent(c.name))
	}
	from := " FROM " + quoteIdent(live.db) + "." + quoteIdent(live.table) + " FORCE INDEX (" + quoteIdent(live.keyIndex) + ")"
	tail := " ORDER BY " + strings.Join(order, ", ") + " LIMIT ?"
	head := "SELECT " + strings.Join(sel, ", ") + from
	p.first = head + tail
	// The expanded form of (k1, k2, ...) > (v1, v2, ...): MariaDB uses
	// the index for it (a range scan from the cursor), not for the row
	// comparison (a scan from the first row).
	var or []string
	for i := range p.keys {
		var and []string
		for j := 0; j < i; j++ {
			and = append(and, order[j]+" = "+p.keys[j].param)
		}
		and = append(and, order[i]+" > "+p.keys[i].param)
		or = append(or, "("+strings.Join(and, " AND ")+")")
	}
	p.after = head + " WHERE " + strings.Join(or, " OR ") + tail
	return p, nil
}

// isWord reports whether s is a non-empty run of ASCII letters, digits
// and underscores: a character set or collation name that can be written
// into a statement as it is.
func isWord(s string) bool {
	for _, r := range s {
		if !(r == '_' || r >= '0' && r <= '9' || r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z') {
			return false
		}
	}
	return s != ""
}

// ---- cursors ----

// cursorFormat is the version of the cursor's JSON.
const cursorFormat = 1

// cursorJSON is a seed cursor:
//
//	{"v":1,"key":[{"col":"id","form":"int","val":"42"},
//	              {"col":"name","form":"text","coll":"utf8mb4_general_ci","val":"<base64>"}]}
//
// one entry per key column, in key order, holding the last row's value.
type cursorJSON struct {
	V   int         `json:"v"`
	Key []cursorKey `json:"key"`
}

// cursorKey is one key column's value. Forms and their values: int and
// uint (integers, YEAR: decimal text), bit (the unsigned value), enum and
// set (form: the column type with its labels; value: the index or bit
// set), float and double (the IEEE bits in hex, exact), decimal (its
// text), date, datetime (DATETIME and TIMESTAMP, UTC) and time (their
// text), text (the raw bytes in the column's character set, base64, with
// the collation) and bytes (binary strings, base64).
type cursorKey struct {
	Col  string `json:"col"`
	Form string `json:"form"`
	Coll string `json:"coll,omitempty"`
	Val  string `json:"val"`
}

// cursorArgs decodes cursor into the statement arguments of p.after.
func (p *readPlan) cursorArgs(cursor string) ([]driver.NamedValue, error) {
	var c cursorJSON
	dec := json.NewDecoder(strings.NewReader(cursor))
	dec.DisallowUnknownFields()
	err := dec.Decode(&c)
	if err == nil {
		if _, end := dec.Token(); end != io.EOF {
			err = errors.New("data after the cursor object")
		}
	}
	if err != nil {
		return nil, fmt.Errorf("%w %q for %s: %v", ErrBadCursor, cursor, p.tv.table.Name, err)
	}
	if c.V != cursorFormat {
		return nil, fmt.Errorf("%w for %s: format %d, want %d", ErrBadCursor, p.tv.table.Name, c.V, cursorFormat)
	}
	if len(c.Key) != len(p.keys) {
		return nil, fmt.Errorf("%w for %s: %d key values, the key has %d columns", ErrBadCursor, p.tv.table.Name, len(c.Key), len(p.keys))
	}
	vals := make([]any, len(p.keys))
	for i, k := range p.keys {
		ck := c.Key[i]
		if ck.Col != k.name || ck.Form != k.form {
			return nil, fmt.Errorf("%w for %s: key column %d is %s (%s) in the cursor, %s (%s) in the table", ErrBadCursor, p.tv.table.Name, i+1, ck.Col, ck.Form, k.name, k.form)
		}
		if ck.Coll != k.coll {
			return nil, fmt.Errorf("%w for %s: the cursor was made under collation %s of key column %s, which is now %s: the key order changed, so the seed must start again from the first row",
				ErrBadCursor, p.tv.table.Name, ck.Coll, k.name, k.coll)
		}
		v, err := parseCursorValue(ck.Form, ck.Val)
		if err != nil {
			return nil, fmt.Errorf("%w for %s: key column %s: %v", ErrBadCursor, p.tv.table.Name, k.name, err)
		}
		vals[i] = v
	}
	// The arguments of (k1 > ?) OR (k1 = ? AND k2 > ?) OR ...
	var args []driver.NamedValue
	for i := range p.keys {
		for j := 0; j <= i; j++ {
			args = append(args, driver.NamedValue{Ordinal: len(args) + 1, Value: vals[j]})
		}
	}
	return args, nil
}

func parseCursorValue(form, val string) (any, error) {
	switch {
	case form == "int":
		return strconv.ParseInt(val, 10, 64)
	case form == "uint" || form == "bit" || strings.HasPrefix(form, "enum(") || strings.HasPrefix(form, "set("):
		return strconv.ParseUint(val, 10, 64)
	case form == "float":
		u, err := strconv.ParseUint(val, 16, 32)
		return float64(math.Float32frombits(uint32(u))), err
	case form == "double":
		u, err := strconv.ParseUint(val, 16, 64)
		return math.Float64frombits(u), err
	case form == "decimal":
		if _, err := decimalText([]byte(val), 65); err != nil {
			return nil, err
		}
		return val, nil
	case form == "date" || form == "datetime" || form == "time":
		// The server's CAST turns an invalid value into NULL, and a
		// comparison with NULL matches no row: the seed would end early.
		if !validTemporal(form, val) {
			return nil, fmt.Errorf("bad %s %q", form, val)
		}
		return val, nil
	case form == "text" || form == "bytes":
		return base64.StdEncoding.DecodeString(val)
	}
	return nil, fmt.Errorf("unknown form %q", form)
}

// validTemporal reports whether s is a value of form date
// (YYYY-MM-DD), datetime (YYYY-MM-DD HH:MM:SS[.f]) or time
// ([-]H:MM:SS[.f], up to 838 hours) that CAST accepts; zero and partial
// dates are valid.
func validTemporal(form, s string) bool {
	i := 0
	digits := func(n int, maxV int64) bool {
		if i+n > len(s) {
			return false
		}
		var v int64
		for _, ch := range []byte(s[i : i+n]) {
			if ch < '0' || ch > '9' {
				return false
			}
			v = v*10 + int64(ch-'0')
		}
		i += n
		return v <= maxV
	}
	hms := func(maxH int64, hourDigits int) bool {
		if hourDigits == 0 {
			start := i
			for i < len(s) && s[i] >= '0' && s[i] <= '9' {
				i++
			}
			h, err := strconv.ParseInt(s[start:i], 10, 64)
			if err != nil || h > maxH {
				return false
			}
		} else if !digits(hourDigits, maxH) {
			return false
		}
		if !lit(s, &i, ':') || !digits(2, 59) || !lit(s, &i, ':') || !digits(2, 59) {
			return false
		}
		_, ok := frac(s, &i)
		return ok && i == len(s)
	}
	if form == "time" {
		lit(s, &i, '-')
		return hms(838, 0)
	}
	if !digits(4, 9999) || !lit(s, &i, '-') || !digits(2, 12) || !lit(s, &i, '-') || !digits(2, 31) {
		return false
	}
	if form == "date" {
		return i == len(s)
	}
	return lit(s, &i, ' ') && hms(23, 2)
}

// cursorOf encodes the cursor after a row whose key values (in key order,
// in the capture's form) are vals.
func (p *readPlan) cursorOf(vals []any) (string, error) {
	c := cursorJSON{V: cursorFormat, Key: make([]cursorKey, len(p.keys))}
	for i, k := range p.keys {
		ck := cursorKey{Col: k.name, Form: k.form, Coll: k.coll}
		switch v := vals[i].(type) {
		case int64:
			if k.form == "int" {
				ck.Val = strconv.FormatInt(v, 10)
			} else {
				ck.Val = strconv.FormatUint(uint64(v), 10)
			}
		case uint64:
			ck.Val = strconv.FormatUint(v, 10)
		case float32:
			ck.Val = strconv.FormatUint(uint64(math.Float32bits(v)), 16)
		case float64:
			ck.Val = strconv.FormatUint(math.Float64bits(v), 16)
		case string:
			ck.Val = v
		case []byte:
			ck.Val = base64.StdEncoding.EncodeToString(v)
		default:
			return "", fmt.Errorf("databus: mysql: key column %s of %s holds %T", k.name, p.tv.table.Name, v)
		}
		c.Key[i] = ck
	}
	b, err := json.Marshal(c)
	return string(b), err
}

// ---- reading ----

// ReadChunk reads up to limit rows of t after cursor, in key order, with
// one statement:
//
//	SELECT cols FROM db.t FORCE INDEX (key) WHERE <key after cursor> ORDER BY key LIMIT n
//
// where <key after cursor> is (k1 > ?) OR (k1 = ? AND k2 > ?) OR ... (the
// form MariaDB turns into a range scan of the key index). The statement
// runs in autocommit, so it reads one consistent InnoDB snapshot and takes
// no lock. Each row becomes the event the capture emits for its insert,
// with Key and Payload byte for byte equal (source.ChunkReader). The
// events' memory belongs to the caller. With no row after cursor it
// returns no rows and cursor itself.
//
// It fails with an error wrapping source.ErrSchemaMismatch when the live
// table is not t (compared before the first chunk of a version, and after
// every read, so that a DDL committed before the statement is caught);
// ErrBadCursor for a cursor it did not make for this key; ErrNotSeedable
// for a table it cannot read; and with the server's error otherwise.
func (r *ChunkReader) ReadChunk(ctx context.Context, t schema.Table, cursor string, limit int) ([]event.Event, string, error) {
	if limit <= 0 {
		return nil, "", fmt.Errorf("databus: mysql: ReadChunk of %s: limit %d is not positive", t.Name, limit)
	}
	p, err := r.plan(ctx, t)
	if err != nil {
		return nil, "", err
	}
	q := p.first
	var args []driver.NamedValue
	if cursor != "" {
		if args, err = p.cursorArgs(cursor); err != nil {
			return nil, "", err
		}
		q = p.after
	}
	args = append(args, driver.NamedValue{Ordinal: len(args) + 1, Value: int64(limit)})
	rows, last, err := r.read(ctx, p, q, args, limit)
	if err != nil {
		// A DDL makes the statement fail (unknown column, no such table):
		// say so when the catalog confirms it.
		if cerr := r.check(ctx, p); cerr != nil && ctx.Err() == nil {
			return nil, "", cerr
		}
		return nil, "", err
	}
	if err := r.check(ctx, p); err != nil {
		return nil, "", err
	}
	next := cursor
	if last != nil {
		if next, err = p.cursorOf(last); err != nil {
			return nil, "", err
		}
	}
	return rows, next, nil
}

// read runs q and converts its rows. last holds the last row's key values
// (nil when there is no row).
func (r *ChunkReader) read(ctx context.Context, p *readPlan, q string, args []driver.NamedValue, limit int) (events []event.Event, last []any, err error) {
	conn, err := r.db.Conn(ctx)
	if err != nil {
		return nil, nil, fmt.Errorf("databus: mysql: read %s: %w", p.tv.table.Name, err)
	}
	defer conn.Close()
	per := r.rowBytes[p.tv.table.Name]
	if per == 0 {
		per = 256
	}
	arena := make([]byte, 0, min(per*limit+per, 64<<20))
	events = make([]event.Event, 0, min(limit, 1<<16))
	vals := make([]any, len(p.cols))
	lastKey := make([]any, len(p.keys))
	keyBufs := make([][]byte, len(p.keys))
	err = conn.Raw(func(dc any) error {
		// The driver's own rows: values point into its read buffer until
		// the next row, which is all the conversion needs (database/sql
		// would copy every one).
		prep, ok := dc.(driver.ConnPrepareContext)
		if !ok {
			return fmt.Errorf("databus: mysql: driver connection %T cannot prepare statements", dc)
		}
		// A prepared statement, also without arguments: the binary
		// protocol sends FLOAT and DOUBLE as their bits, the text protocol
		// rounds FLOAT to 6 digits.
		st, err := prep.PrepareContext(ctx, q)
		if err != nil {
			return err
		}
		defer st.Close()
		sq, ok := st.(driver.StmtQueryContext)
		if !ok {
			return fmt.Errorf("databus: mysql: driver statement %T cannot query", st)
		}
		rows, err := sq.QueryContext(ctx, args)
		if err != nil {
			return err
		}
		defer rows.Close()
		if n := len(rows.Columns()); n != len(p.cols) {
			return fmt.Errorf("databus: mysql: read %s: %d columns, want %d", p.tv.table.Name, n, len(p.cols))
		}
		dest := make([]driver.Value, len(p.cols))
		for {
			if err := rows.Next(dest); err == io.EOF {
				return nil
			} else if err != nil {
				return err
			}
			for i := range p.cols {
				if vals[i], err = fromSelect(p.cols[i].def, dest[i]); err != nil {
					return fmt.Errorf("databus: mysql: read %s: %w", p.tv.table.Name, err)
				}
			}
			start := len(arena)
			if arena, err = p.tv.appendKey(arena, vals); err != nil {
				return err
			}
			k := len(arena)
			if arena, err = p.tv.appendRow(arena, vals); err != nil {
				return err
			}
			events = append(events, event.Event{Kind: event.KindData, Op: event.OpInsert, Source: p.tv.table.ID, SchemaVersion: p.tv.table.Version,
				Key: arena[start:k:k], Payload: arena[k:len(arena):len(arena)]})
			// The driver reuses its buffer: keep copies of the key values.
			for i, kr := range p.keys {
				if b, ok := vals[kr.col].([]byte); ok {
					keyBufs[i] = append(keyBufs[i][:0], b...)
					lastKey[i] = keyBufs[i]
				} else {
					lastKey[i] = vals[kr.col]
				}
			}
		}
	})
	if err != nil {
		return nil, nil, err
	}
	if len(events) == 0 {
		return nil, nil, nil
	}
	r.rowBytes[p.tv.table.Name] = len(arena)/len(events) + 1
	return events, lastKey, nil
}

// ---- values ----

// fromSelect converts v, a column value of the binary protocol as the
// driver returns it (the column selected as newReadPlan says), into the
// value go-mysql's binlog decoder gives for the same column value, which
// is what colDef.appendValue and appendKey take.
func fromSelect(c *colDef, v driver.Value) (any, error) {
	if v == nil {
		return nil, nil
	}
	bad := func() error {
		return fmt.Errorf("column %s (%s): unexpected value %T %v", c.name, c.sourceType(), v, v)
	}
	// Values already in the capture's form are returned as they are, not
	// re-boxed: most of a chunk's allocations would be that.
	switch c.kind {
	case kInt, kYear, kEnum:
		if c.kind == kInt && c.size == 8 && c.unsigned {
			return selectUint(v, bad)
		}
		if _, ok := v.(int64); ok {
			return v, nil
		}
	case kSet:
		return selectUint(v, bad)
	case kBit:
		b, ok := v.([]byte)
		if !ok || len(b) > 8 {
			return nil, bad()
		}
		var u uint64
		for _, x := range b {
			u = u<<8 | uint64(x)
		}
		return int64(u), nil
	case kFloat:
		if _, ok := v.(float32); ok {
			return v, nil
		}
	case kDouble:
		if _, ok := v.(float64); ok {
			return v, nil
		}
	case kDecimal:
		if b, ok := v.([]byte); ok {
			s, err := decimalText(b, c.scale)
			if err != nil {
				return nil, fmt.Errorf("column %s: %v", c.name, err)
			}
			return s, nil
		}
	case kDate:
		if b, ok := v.([]byte); ok && len(b) == 10 {
			return string(b), nil
		}
	case kDatetime, kTimestamp:
		want := 19
		if c.scale > 0 {
			want += 1 + c.scale
		}
		if b, ok := v.([]byte); ok && len(b) == want {
			return string(b), nil
		}
	case kTime:
		if b, ok := v.([]byte); ok {
			return timeText(b), nil
		}
	case kString, kGeometry:
		if _, ok := v.([]byte); ok {
			return v, nil
		}
	}
	return nil, bad()
}

// selectUint reads an unsigned BIGINT, which the driver returns as int64
// up to MaxInt64 and as decimal text above.
func selectUint(v driver.Value, bad func() error) (any, error) {
	switch x := v.(type) {
	case int64:
		return uint64(x), nil
	case []byte:
		u, err := strconv.ParseUint(string(x), 10, 64)
		if err != nil {
			return nil, bad()
		}
		return u, nil
	}
	return nil, bad()
}

// decimalText renders a DECIMAL's text as go-mysql's decoder does: a
// minus sign for negatives, the integer digits without leading zeros ("0"
// when none), and exactly scale fractional digits after a point (none and
// no point for scale 0).
func decimalText(b []byte, scale int) (string, error) {
	s := b
	neg := len(s) > 0 && s[0] == '-'
	if neg {
		s = s[1:]
	}
	ip, fp, _ := bytes.Cut(s, []byte("."))
	for _, part := range [2][]byte{ip, fp} {
		for _, ch := range part {
			if ch < '0' || ch > '9' {
				return "", fmt.Errorf("bad decimal %q", b)
			}
		}
	}
	if len(fp) > scale || len(ip)+len(fp) == 0 {
		return "", fmt.Errorf("bad decimal %q for scale %d", b, scale)
	}
	if len(fp) == scale && (scale == 0) == (len(s) == len(ip)) && len(ip) > 0 && (ip[0] != '0' || len(ip) == 1) {
		return string(b), nil // already so: the server's usual rendering
	}
	ip = bytes.TrimLeft(ip, "0")
	out := make([]byte, 0, len(b)+scale+2)
	if neg {
		out = append(out, '-')
	}
	if len(ip) == 0 {
		out = append(out, '0')
	}
	out = append(out, ip...)
	if scale > 0 {
		out = append(out, '.')
		out = append(out, fp...)
		for range scale - len(fp) {
			out = append(out, '0')
		}
	}
	return string(out), nil
}

// timeText renders a TIME's text as go-mysql's decoder does: the
// fractional part only when it is not zero (the server always prints the
// column's digits), and zero unsigned.
func timeText(b []byte) string {
	if i := bytes.IndexByte(b, '.'); i >= 0 && len(bytes.Trim(b[i+1:], "0")) == 0 {
		b = b[:i]
	}
	if len(b) > 0 && b[0] == '-' && len(bytes.Trim(b[1:], "0:.")) == 0 {
		b = b[1:]
	}
	return string(b)
}
