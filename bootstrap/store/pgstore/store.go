package pgstore

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"hash/crc32"
	"math"
	"sort"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/databus-go/databus/bootstrap/store"
	"github.com/databus-go/databus/schema"
)

// Format is the version of the table layout this package reads and writes
// (see the package doc). Open refuses a store of another format rather than
// misreading it.
const Format = 1

// ErrClosed is wrapped by the errors of calls made after Close.
var ErrClosed = errors.New("databus: bootstrap store closed")

// DefaultSchema is the schema Options.Schema defaults to.
const DefaultSchema = "databus_bootstrap"

// DefaultMaxConns is the pool size Options.MaxConns defaults to: one
// producer and a few concurrent readers per server.
const DefaultMaxConns = 4

// Options configure Open. The zero value is valid.
type Options struct {
	// Schema is the PostgreSQL schema that holds the store's tables
	// (DefaultSchema when empty). It is created when missing. Stores in
	// different schemas of one database are independent.
	Schema string
	// MaxConns bounds the number of connections the store opens
	// (DefaultMaxConns when 0). Calls beyond it wait for a free one.
	MaxConns int
}

// Store is a bootstrap store in a PostgreSQL database. It implements
// store.Store and is safe for concurrent use, also by several processes
// sharing the database (see the package doc).
type Store struct {
	pool   *pool
	id     string // never changes once the store exists
	schema string // the schema name, unquoted
	q      queries
	// frameSize is the mean frame size of the last snapshot page read,
	// for snapshotLimit; 0 until a page has been read.
	frameSize atomic.Int64
}

var _ store.Store = (*Store)(nil)

// Open connects to the database named by connString (a PostgreSQL URL or
// key=value string, as pgx accepts), creates the store's schema and tables
// when they are missing, and returns the store. Several processes may open
// the same store at once; they agree on its id. Open fails when the
// database cannot be reached, when the tables cannot be created, or when
// they hold a store of another format.
func Open(ctx context.Context, connString string, opts Options) (*Store, error) {
	if opts.Schema == "" {
		opts.Schema = DefaultSchema
	}
	if len(opts.Schema) > 63 {
		return nil, fmt.Errorf("databus: bootstrap store schema name %q is longer than PostgreSQL's 63 bytes", opts.Schema)
	}
	if opts.MaxConns == 0 {
		opts.MaxConns = DefaultMaxConns
	}
	if opts.MaxConns < 1 {
		return nil, fmt.Errorf("databus: bootstrap store MaxConns %d must be at least 1", opts.MaxConns)
	}
	cfg, err := pgx.ParseConfig(connString)
	if err != nil {
		return nil, fmt.Errorf("databus: bootstrap store connection string: %w", err)
	}
	// Keyset pagination is only cheap as an ordered scan of the primary
	// key. With a selective filter (a MOD partition, whose selectivity the
	// planner cannot estimate) and a large LIMIT, the planner prefers a
	// sequential scan and a sort of the whole table, on every page. Every
	// ordered query of the store has an index that gives its order, so
	// forbidding sorts costs nothing and pins the right plans. (A SET
	// rather than a startup parameter, which poolers such as PgBouncer
	// refuse; results are the same without it, only slower.)
	cfg.AfterConnect = func(ctx context.Context, pc *pgconn.PgConn) error {
		return pc.Exec(ctx, "SET enable_sort = off").Close()
	}
	s := &Store{
		pool:   newPool(cfg, opts.MaxConns),
		schema: opts.Schema,
		q:      newQueries(pgx.Identifier{opts.Schema}.Sanitize()),
	}
	c, err := s.pool.acquire(ctx)
	if err != nil {
		s.pool.close()
		return nil, fmt.Errorf("databus: bootstrap store: connect: %w", err)
	}
	s.id, err = s.prepare(ctx, c)
	s.pool.release(c)
	if err != nil {
		s.pool.close()
		return nil, err
	}
	return s, nil
}

// prepare makes sure the tables exist and returns the store id.
func (s *Store) prepare(ctx context.Context, c *conn) (string, error) {
	// A store that exists needs no DDL, so a server with read-only
	// credentials can open it.
	id, err := s.readID(ctx, c)
	if err == nil {
		return id, nil
	}
	var pgErr *pgconn.PgError
	missing := errors.Is(err, pgx.ErrNoRows) ||
		errors.As(err, &pgErr) && (pgErr.Code == "42P01" || pgErr.Code == "3F000") // undefined_table, invalid_schema_name
	if !missing {
		return "", err
	}
	if err := s.create(ctx, c); err != nil {
		return "", err
	}
	return s.readID(ctx, c)
}

// readID reads the store id and checks the format.
func (s *Store) readID(ctx context.Context, c *conn) (string, error) {
	var id string
	var format int
	err := c.QueryRow(ctx, s.q.readID).Scan(&id, &format)
	if err != nil {
		return "", err
	}
	if format != Format {
		return "", fmt.Errorf("databus: bootstrap store in schema %q has format %d; this binary reads format %d", s.schema, format, Format)
	}
	return id, nil
}

// create runs the DDL and inserts the meta row in one transaction, under an
// advisory lock: CREATE ... IF NOT EXISTS is not safe against a concurrent
// CREATE of the same name (both may pass the check, one then fails on the
// catalog's unique index).
func (s *Store) create(ctx context.Context, c *conn) error {
	var raw [16]byte
	if _, err := rand.Read(raw[:]); err != nil {
		return fmt.Errorf("databus: bootstrap store id: %w", err)
	}
	err := pgx.BeginFunc(ctx, c, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, "SELECT pg_advisory_xact_lock($1, $2)", advisoryClass, int32(crc32.ChecksumIEEE([]byte(s.schema)))); err != nil {
			return err
		}
		for _, stmt := range s.q.ddl {
			if _, err := tx.Exec(ctx, stmt); err != nil {
				return fmt.Errorf("%s: %w", stmt, err)
			}
		}
		_, err := tx.Exec(ctx, s.q.insertMeta, Format, hex.EncodeToString(raw[:]))
		return err
	})
	if err != nil {
		return fmt.Errorf("databus: bootstrap store: create tables in schema %q: %w", s.schema, err)
	}
	return nil
}

// advisoryClass is the first key of the advisory lock taken around the
// DDL; the second is derived from the schema name, so that stores in
// different schemas do not wait for each other.
const advisoryClass int32 = 0x44425553 // "DBUS"

// Close closes the store's idle connections; connections in use by
// in-flight calls are closed when those calls end. Calls made after Close
// fail. Close always returns nil.
func (s *Store) Close() error {
	s.pool.close()
	return nil
}

// ID returns the store's id (State.ID) without a round trip.
func (s *Store) ID() string { return s.id }

// withConn runs f with a pooled connection. A server restart ends every
// session, and an idle connection is only found dead when used; so when f
// fails because its connection broke, withConn closes the idle connections
// (they most likely died too) and runs f once more on a new connection if
// that cannot repeat a write: when idempotent (reads, which
// must then start over from nothing), or when nothing reached the server
// (pgconn.SafeToRetry).
func (s *Store) withConn(ctx context.Context, idempotent bool, f func(c *conn) error) error {
	for attempt := 0; ; attempt++ {
		c, err := s.pool.acquire(ctx)
		if err != nil {
			return err
		}
		err = f(c)
		broken := err != nil && c.IsClosed()
		s.pool.release(c)
		if !broken || attempt > 0 || ctx.Err() != nil || !(idempotent || pgconn.SafeToRetry(err)) {
			return err
		}
		s.pool.dropIdle()
	}
}

// State returns the store's id, head and log bounds, as of the last
// committed Apply or Purge.
func (s *Store) State(ctx context.Context) (store.State, error) {
	var st store.State
	err := s.withConn(ctx, true, func(c *conn) error {
		var head, headTime, lw, windows int64
		err := c.QueryRow(ctx, s.q.readState).Scan(&st.ID, &head, &headTime, &st.Empty, &lw, &windows)
		st.Head, st.HeadTime, st.LowWatermark, st.Windows = uint64(head), headTime, uint64(lw), uint64(windows)
		return err
	})
	if err != nil {
		return store.State{}, fmt.Errorf("databus: bootstrap store state: %w", err)
	}
	return st, nil
}

// Schemas returns every schema version held, ordered by source id, then
// version.
func (s *Store) Schemas(ctx context.Context) ([]schema.Table, error) {
	var out []schema.Table
	err := s.withConn(ctx, true, func(c *conn) error {
		out = out[:0]
		rows, err := c.Query(ctx, s.q.readSchemas)
		if err != nil {
			return err
		}
		defer rows.Close()
		for rows.Next() {
			var def []byte
			if err := rows.Scan(&def); err != nil {
				return err
			}
			var t schema.Table
			if err := json.Unmarshal(def, &t); err != nil {
				return fmt.Errorf("corrupt schema definition: %w", err)
			}
			out = append(out, t)
		}
		return rows.Err()
	})
	if err != nil {
		return nil, fmt.Errorf("databus: bootstrap store schemas: %w", err)
	}
	return out, nil
}

// Seeds returns the progress of every seed run recorded, ordered by table
// name.
func (s *Store) Seeds(ctx context.Context) ([]store.SeedProgress, error) {
	var out []store.SeedProgress
	err := s.withConn(ctx, true, func(c *conn) error {
		out = out[:0]
		rows, err := c.Query(ctx, s.q.readSeeds)
		if err != nil {
			return err
		}
		defer rows.Close()
		for rows.Next() {
			var p store.SeedProgress
			var n int64
			var started, updated *int64
			if err := rows.Scan(&p.Table, &p.Run, &p.Cursor, &n, &p.Done, &started, &updated); err != nil {
				return err
			}
			p.Rows, p.Started, p.Updated = uint64(n), fromNanos(started), fromNanos(updated)
			out = append(out, p)
		}
		return rows.Err()
	})
	if err != nil {
		return nil, fmt.Errorf("databus: bootstrap store seeds: %w", err)
	}
	return out, nil
}

// toNanos stores a time as ns since the epoch, exactly (timestamptz keeps
// only microseconds); the zero time, which has no such representation, is
// NULL.
func toNanos(t time.Time) *int64 {
	if t.IsZero() {
		return nil
	}
	n := t.UnixNano()
	return &n
}

func fromNanos(n *int64) time.Time {
	if n == nil {
		return time.Time{}
	}
	return time.Unix(0, *n)
}

// Purge deletes the log windows committed before p.LogBefore and the
// tombstones of windows committed before p.TombstonesBefore, in one
// transaction that excludes Apply (it locks the meta row).
//
// Log windows go oldest first and only as a prefix: Purge stops at the
// first window committed at or after p.LogBefore, even if a later window
// has an earlier timestamp, and never deletes the head window. That keeps
// the invariant every reader relies on: the log holds every window in
// (LowWatermark, Head].
func (s *Store) Purge(ctx context.Context, p store.PurgePolicy) (store.PurgeResult, error) {
	var res store.PurgeResult
	err := s.withConn(ctx, false, func(c *conn) error {
		return pgx.BeginFunc(ctx, c, func(tx pgx.Tx) error {
			var head, headTime, lw int64
			var empty bool
			if err := tx.QueryRow(ctx, s.q.lockMeta).Scan(&head, &headTime, &empty, &lw); err != nil {
				return err
			}
			res.LowWatermark = uint64(lw)
			if !p.LogBefore.IsZero() && !empty {
				var deleted, newLW int64
				err := tx.QueryRow(ctx, s.q.purgeLog, p.LogBefore.UnixNano(), head).Scan(&deleted, &newLW)
				if err != nil {
					return err
				}
				if deleted > 0 {
					res.Windows = uint64(deleted)
					res.LowWatermark = uint64(newLW)
					if _, err := tx.Exec(ctx, s.q.purgeMeta, newLW, deleted); err != nil {
						return err
					}
				}
			}
			if !p.TombstonesBefore.IsZero() {
				tag, err := tx.Exec(ctx, s.q.purgeTombstones, p.TombstonesBefore.UnixNano())
				if err != nil {
					return err
				}
				res.Tombstones = uint64(tag.RowsAffected())
			}
			return nil
		})
	})
	if err != nil {
		return store.PurgeResult{}, fmt.Errorf("databus: bootstrap store purge: %w", err)
	}
	return res, nil
}

// sortedSources returns a filter's source set as a sorted array parameter.
func sortedSources(set map[uint32]struct{}) []int64 {
	out := make([]int64, 0, len(set))
	for id := range set {
		out = append(out, int64(id))
	}
	sort.Slice(out, func(i, j int) bool { return out[i] < out[j] })
	return out
}

// clampSCN maps an SCN to the bigint domain for comparisons: every stored
// SCN is <= math.MaxInt64, so a bound above it means "all".
func clampSCN(scn uint64) int64 {
	if scn > math.MaxInt64 {
		return math.MaxInt64
	}
	return int64(scn)
}
