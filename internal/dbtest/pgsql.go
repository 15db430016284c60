package dbtest

// A minimal database/sql driver over pgx.Conn, for PostgresServer.DB.
//
// It exists because pgx's own adapter, github.com/jackc/pgx/v5/stdlib,
// imports pgxpool and with it github.com/jackc/puddle/v2, which the module
// does not require. Once it does, DB can return stdlib.OpenDB(cfg) instead
// and this file can go.
//
// What it does: statements run through pgx (extended protocol with cached
// statements when there are arguments, simple protocol without; pgx encodes
// the arguments, so any type pgx accepts may be passed). Results are asked
// for in text format; the values of integer, float, bool, bytea, date and
// timestamp columns are decoded into int64, float64, bool, []byte and
// time.Time, every other column is returned as the server's text.

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"fmt"
	"io"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgtype"
)

// pgConnector opens pgx connections to one connection string.
type pgConnector struct{ connString string }

func (c *pgConnector) Connect(ctx context.Context) (driver.Conn, error) {
	conn, err := pgx.Connect(ctx, c.connString)
	if err != nil {
		return nil, err
	}
	return &pgConn{conn: conn, lastReset: time.Now()}, nil
}

func (c *pgConnector) Driver() driver.Driver { return pgDriver{} }

type pgDriver struct{}

func (pgDriver) Open(name string) (driver.Conn, error) {
	return (&pgConnector{connString: name}).Connect(context.Background())
}

type pgConn struct {
	conn      *pgx.Conn
	lastReset time.Time // when ResetSession last returned; see there
}

var _ interface {
	driver.Conn
	driver.ConnBeginTx
	driver.ConnPrepareContext
	driver.ExecerContext
	driver.QueryerContext
	driver.Pinger
	driver.SessionResetter
	driver.Validator
	driver.NamedValueChecker
} = (*pgConn)(nil)

func (c *pgConn) Prepare(query string) (driver.Stmt, error) { return &pgStmt{c: c, query: query}, nil }

func (c *pgConn) PrepareContext(_ context.Context, query string) (driver.Stmt, error) {
	return c.Prepare(query)
}

func (c *pgConn) Close() error {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	return c.conn.Close(ctx)
}

func (c *pgConn) Begin() (driver.Tx, error) {
	return c.BeginTx(context.Background(), driver.TxOptions{})
}

func (c *pgConn) BeginTx(ctx context.Context, opts driver.TxOptions) (driver.Tx, error) {
	var o pgx.TxOptions
	switch sql.IsolationLevel(opts.Isolation) {
	case sql.LevelDefault:
	case sql.LevelReadUncommitted:
		o.IsoLevel = pgx.ReadUncommitted
	case sql.LevelReadCommitted:
		o.IsoLevel = pgx.ReadCommitted
	case sql.LevelRepeatableRead, sql.LevelSnapshot:
		o.IsoLevel = pgx.RepeatableRead
	case sql.LevelSerializable:
		o.IsoLevel = pgx.Serializable
	default:
		return nil, fmt.Errorf("dbtest: unsupported isolation level %v", sql.IsolationLevel(opts.Isolation))
	}
	if opts.ReadOnly {
		o.AccessMode = pgx.ReadOnly
	}
	tx, err := c.conn.BeginTx(ctx, o)
	if err != nil {
		return nil, c.fail(err)
	}
	return pgTx{tx: tx}, nil
}

func (c *pgConn) ExecContext(ctx context.Context, query string, args []driver.NamedValue) (driver.Result, error) {
	tag, err := c.conn.Exec(ctx, query, argValues(args)...)
	if err != nil {
		return nil, c.fail(err)
	}
	return driver.RowsAffected(tag.RowsAffected()), nil
}

func (c *pgConn) QueryContext(ctx context.Context, query string, args []driver.NamedValue) (driver.Rows, error) {
	qargs := append([]any{pgx.QueryResultFormats{pgx.TextFormatCode}}, argValues(args)...)
	rows, err := c.conn.Query(ctx, query, qargs...)
	if err != nil {
		return nil, c.fail(err)
	}
	return &pgRows{rows: rows}, nil
}

func (c *pgConn) Ping(ctx context.Context) error { return c.fail(c.conn.Ping(ctx)) }

// ResetSession runs when database/sql takes the connection from the pool. As
// in pgx's stdlib adapter, a connection left inside a transaction is dropped,
// and one idle for more than a second is pinged first; so right after a
// server restart a connection used less than a second before can still fail
// once.
func (c *pgConn) ResetSession(ctx context.Context) error {
	if c.conn.IsClosed() || c.conn.PgConn().TxStatus() != 'I' {
		return driver.ErrBadConn
	}
	now := time.Now()
	if now.Sub(c.lastReset) > time.Second {
		if err := c.conn.PgConn().Ping(ctx); err != nil {
			return driver.ErrBadConn
		}
	}
	c.lastReset = now
	return nil
}

func (c *pgConn) IsValid() bool { return !c.conn.IsClosed() }

// CheckNamedValue accepts every argument as is: pgx encodes it.
func (c *pgConn) CheckNamedValue(*driver.NamedValue) error { return nil }

// fail turns an error that pgx says happened before anything was sent into
// driver.ErrBadConn, so that database/sql retries on another connection
// (after a server restart, for example). Other errors are returned as is;
// a closed connection is then dropped by ResetSession or IsValid.
func (c *pgConn) fail(err error) error {
	if err != nil && pgconn.SafeToRetry(err) && c.conn.IsClosed() {
		return driver.ErrBadConn
	}
	return err
}

func argValues(args []driver.NamedValue) []any {
	vals := make([]any, len(args))
	for i, a := range args {
		vals[i] = a.Value
	}
	return vals
}

type pgStmt struct {
	c     *pgConn
	query string
}

func (s *pgStmt) Close() error  { return nil }
func (s *pgStmt) NumInput() int { return -1 }

func (s *pgStmt) Exec(args []driver.Value) (driver.Result, error) {
	return s.ExecContext(context.Background(), named(args))
}

func (s *pgStmt) Query(args []driver.Value) (driver.Rows, error) {
	return s.QueryContext(context.Background(), named(args))
}

func (s *pgStmt) ExecContext(ctx context.Context, args []driver.NamedValue) (driver.Result, error) {
	return s.c.ExecContext(ctx, s.query, args)
}

func (s *pgStmt) QueryContext(ctx context.Context, args []driver.NamedValue) (driver.Rows, error) {
	return s.c.QueryContext(ctx, s.query, args)
}

func named(args []driver.Value) []driver.NamedValue {
	nv := make([]driver.NamedValue, len(args))
	for i, a := range args {
		nv[i] = driver.NamedValue{Ordinal: i + 1, Value: a}
	}
	return nv
}

type pgTx struct{ tx pgx.Tx }

func (t pgTx) Commit() error   { return t.tx.Commit(context.Background()) }
func (t pgTx) Rollback() error { return t.tx.Rollback(context.Background()) }

type pgRows struct {
	rows pgx.Rows
	cols []string
}

func (r *pgRows) Columns() []string {
	if r.cols == nil {
		fds := r.rows.FieldDescriptions()
		r.cols = make([]string, len(fds))
		for i, fd := range fds {
			r.cols[i] = fd.Name
		}
	}
	return r.cols
}

func (r *pgRows) Close() error {
	r.rows.Close()
	return r.rows.Err()
}

func (r *pgRows) Next(dest []driver.Value) error {
	if !r.rows.Next() {
		if err := r.rows.Err(); err != nil {
			return err
		}
		return io.EOF
	}
	fds := r.rows.FieldDescriptions()
	raw := r.rows.RawValues()
	var decoded []any // decoded lazily: most rows of text columns need none
	for i := range dest {
		if raw[i] == nil {
			dest[i] = nil
			continue
		}
		if !decodedOIDs[fds[i].DataTypeOID] {
			dest[i] = string(raw[i])
			continue
		}
		if decoded == nil {
			var err error
			if decoded, err = r.rows.Values(); err != nil {
				return err
			}
		}
		dest[i] = widen(decoded[i])
	}
	return nil
}

// decodedOIDs are the types whose values Next decodes; the others are text.
var decodedOIDs = map[uint32]bool{
	pgtype.Int2OID:        true,
	pgtype.Int4OID:        true,
	pgtype.Int8OID:        true,
	pgtype.OIDOID:         true,
	pgtype.Float4OID:      true,
	pgtype.Float8OID:      true,
	pgtype.BoolOID:        true,
	pgtype.ByteaOID:       true,
	pgtype.DateOID:        true,
	pgtype.TimestampOID:   true,
	pgtype.TimestamptzOID: true,
}

// widen converts a pgx value of a decodedOIDs type to a driver.Value.
func widen(v any) driver.Value {
	switch x := v.(type) {
	case int16:
		return int64(x)
	case int32:
		return int64(x)
	case uint32:
		return int64(x)
	case float32:
		return float64(x)
	case pgtype.InfinityModifier: // an infinite date or timestamp
		return x.String()
	}
	return v
}
