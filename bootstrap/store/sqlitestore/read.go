package sqlitestore

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/databus-go/databus/bootstrap/store"
	"github.com/databus-go/databus/event"
	"github.com/databus-go/databus/filter"
	"github.com/databus-go/databus/schema"
)

// maxModPushdown bounds the buckets of a MOD filter written into a query's
// IN list; a filter with more is checked in Go only.
const maxModPushdown = 512

// clampSCN maps an SCN bound to SQLite's signed integers: no stored SCN is
// above math.MaxInt64, so a larger bound means "all".
func clampSCN(v uint64) int64 {
	if v > math.MaxInt64 {
		return math.MaxInt64
	}
	return int64(v)
}

// pushdown appends to where the conditions of f that SQL can check, as a
// superset of f: every row f matches passes them. Integers are written as
// literals (they come from a parsed filter, never from text). exact says
// whether the conditions are f itself, except for MOD over rows without a
// modhash (which the caller handles).
func pushdown(where *strings.Builder, f *filter.Filter) (exact bool) {
	if f == nil {
		return true
	}
	if f.Sources != nil {
		where.WriteString(" AND source IN (")
		for i, id := range sortedSources(f) {
			if i > 0 {
				where.WriteByte(',')
			}
			where.WriteString(strconv.FormatUint(uint64(id), 10))
		}
		where.WriteByte(')')
	}
	return pushdownPartition(where, f)
}

func sortedSources(f *filter.Filter) []uint32 {
	ids := make([]uint32, 0, len(f.Sources))
	for id := range f.Sources {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	return ids
}

// pushdownPartition is pushdown for f's partition only.
func pushdownPartition(where *strings.Builder, f *filter.Filter) (exact bool) {
	if f == nil {
		return true
	}
	p := &f.Partition
	switch p.Kind {
	case filter.Range:
		where.WriteString(" AND (")
		for i, r := range p.Ranges {
			if i > 0 {
				where.WriteString(" OR ")
			}
			fmt.Fprintf(where, "(ikey >= %d AND ikey < %d)", r.Lo, r.Hi)
		}
		where.WriteByte(')')
	case filter.Mod:
		var on []int
		for b, ok := range p.Buckets {
			if ok {
				on = append(on, b)
			}
		}
		if len(on) > maxModPushdown {
			return false
		}
		fmt.Fprintf(where, " AND (modhash IS NULL OR modhash %% %d IN (", p.N)
		for i, b := range on {
			if i > 0 {
				where.WriteByte(',')
			}
			where.WriteString(strconv.Itoa(b))
		}
		where.WriteString("))")
	}
	return true
}

// noneMatch reports whether f matches no data frame at all.
func noneMatch(f *filter.Filter) bool {
	if f == nil {
		return false
	}
	if f.Sources != nil && len(f.Sources) == 0 {
		return true
	}
	if f.Partition.Kind == filter.Mod && !slices.Contains(f.Partition.Buckets, true) {
		return true
	}
	return f.Partition.Kind == filter.Range && len(f.Partition.Ranges) == 0
}

// Snapshot implements store.Store. The page is read in one read
// transaction in primary-key order, with q.Filter pushed down as far as
// SQL can and every row checked again with the filter in Go; one row past
// the page is looked for, so that Next is nil exactly when no row follows.
// With a source set, each source is its own primary-key range scan (SQLite
// would otherwise scan a source from its first key on every page).
func (s *Store) Snapshot(ctx context.Context, q store.SnapshotQuery) (store.SnapshotPage, error) {
	p := pager{q: &q, frames: q.Dst[:0], last: -1}
	if q.MaxRows <= 0 || q.MaxBytes <= 0 {
		return store.SnapshotPage{Frames: p.frames}, fmt.Errorf("databus: sqlitestore: snapshot: MaxRows %d and MaxBytes %d must be > 0", q.MaxRows, q.MaxBytes)
	}
	p.f = q.Filter
	if p.f != nil && p.f.All() {
		p.f = nil
	}
	if noneMatch(p.f) {
		return store.SnapshotPage{Frames: p.frames}, nil
	}
	// The rows are read through the driver's connection: database/sql's
	// per-row locking and conversions cost a third of the time of a page.
	conn, err := s.r.Conn(ctx)
	if err != nil {
		return store.SnapshotPage{Frames: p.frames}, s.readErr("snapshot", err)
	}
	defer conn.Close()
	err = conn.Raw(func(dc any) error {
		qc, ok := dc.(driver.QueryerContext)
		if !ok {
			return fmt.Errorf("driver connection %T cannot query", dc)
		}
		if p.f == nil || p.f.Sources == nil {
			query, args := snapshotSQL(q.AsOf, q.After, p.f)
			return p.read(ctx, qc, query, args)
		}
		// Several queries: one read transaction keeps them on one
		// snapshot of the file.
		bt, ok := dc.(driver.ConnBeginTx)
		if !ok {
			return fmt.Errorf("driver connection %T cannot begin a transaction", dc)
		}
		tx, err := bt.BeginTx(ctx, driver.TxOptions{})
		if err != nil {
			return err
		}
		defer tx.Rollback()
		for _, src := range sortedSources(p.f) {
			if q.After != nil && src < q.After.Source {
				continue
			}
			var after []byte
			if q.After != nil && src == q.After.Source {
				after = q.After.Key
				if after == nil {
					after = []byte{}
				}
			}
			query, args := sourceSQL(q.AsOf, src, after, p.f)
			if err := p.read(ctx, qc, query, args); err != nil {
				return err
			}
			if p.more {
				break
			}
		}
		return nil
	})
	if err != nil {
		return store.SnapshotPage{Frames: p.frames}, s.readErr("snapshot", err)
	}
	return p.page(), nil
}

// pager fills one snapshot page from one or more queries.
type pager struct {
	q      *store.SnapshotQuery
	f      *filter.Filter
	frames []byte
	rows   int
	last   int  // offset of the last row's frame in frames
	more   bool // a matching row follows the page
}

// read adds the rows of query to the page until it is full and one more
// row was found.
func (p *pager) read(ctx context.Context, qc driver.QueryerContext, query string, args []driver.NamedValue) error {
	rows, err := qc.QueryContext(ctx, query, args)
	if err != nil {
		return err
	}
	defer rows.Close()
	dest := make([]driver.Value, 1)
	for {
		if err := rows.Next(dest); err != nil {
			if err == io.EOF {
				return nil
			}
			return err
		}
		fr, _ := dest[0].([]byte)
		if len(fr) < event.HeaderSize {
			return fmt.Errorf("corrupt row frame of %d bytes", len(fr))
		}
		if p.f != nil {
			h, _ := event.PeekHeader(fr)
			if !p.f.Match(h) {
				continue
			}
		}
		if p.rows >= p.q.MaxRows || (p.rows > 0 && len(p.frames)+len(fr) > p.q.MaxBytes) {
			p.more = true
			return nil
		}
		p.last = len(p.frames)
		p.frames = append(p.frames, fr...)
		p.rows++
	}
}

func (p *pager) page() store.SnapshotPage {
	page := store.SnapshotPage{Frames: p.frames, Rows: p.rows}
	if p.more {
		h, _ := event.PeekHeader(p.frames[p.last:])
		// A copy: the caller may reuse Frames as the next page's Dst.
		page.Next = &store.Cursor{Source: h.Source, Key: slices.Clone(h.Key)}
	}
	return page
}

// snapshotSQL is the query of a snapshot page without a source set: the
// frames of the live rows at asOf after the cursor, in primary-key order,
// with f's partition pushed down.
func snapshotSQL(asOf uint64, after *store.Cursor, f *filter.Filter) (string, []driver.NamedValue) {
	var sb strings.Builder
	sb.WriteString("SELECT frame FROM snapshot WHERE deleted = 0 AND scn <= ?")
	args := []driver.NamedValue{{Ordinal: 1, Value: clampSCN(asOf)}}
	if after != nil {
		sb.WriteString(" AND (source, key) > (?, ?)")
		key := after.Key
		if key == nil {
			key = []byte{} // a blob, never NULL: every key is after it
		}
		args = append(args, driver.NamedValue{Ordinal: 2, Value: int64(after.Source)}, driver.NamedValue{Ordinal: 3, Value: key})
	}
	pushdown(&sb, f)
	sb.WriteString(" ORDER BY source, key")
	return sb.String(), args
}

// sourceSQL is the query of the rows of one source at asOf, after the key
// after when it is not nil, with f's partition pushed down.
func sourceSQL(asOf uint64, src uint32, after []byte, f *filter.Filter) (string, []driver.NamedValue) {
	var sb strings.Builder
	sb.WriteString("SELECT frame FROM snapshot WHERE source = ? AND deleted = 0 AND scn <= ?")
	args := []driver.NamedValue{{Ordinal: 1, Value: int64(src)}, {Ordinal: 2, Value: clampSCN(asOf)}}
	if after != nil {
		sb.WriteString(" AND key > ?")
		args = append(args, driver.NamedValue{Ordinal: 3, Value: after})
	}
	pushdownPartition(&sb, f)
	sb.WriteString(" ORDER BY key")
	return sb.String(), args
}

// CountRows implements store.Store: count(*) with the filter pushed down
// where it is exact, and a scan of the keys checked in Go where it is not
// (MOD over keys without a modhash, or with too many buckets to push).
func (s *Store) CountRows(ctx context.Context, asOf uint64, f *filter.Filter) (uint64, error) {
	if f != nil && f.All() {
		f = nil
	}
	if noneMatch(f) {
		return 0, nil
	}
	var sb strings.Builder
	sb.WriteString("FROM snapshot WHERE deleted = 0 AND scn <= ?")
	exact := pushdown(&sb, f)
	cond := sb.String()
	// Up to two queries: one read transaction keeps them on one state.
	tx, err := s.r.BeginTx(ctx, nil)
	if err != nil {
		return 0, s.readErr("count rows", err)
	}
	defer tx.Rollback()
	if !exact {
		// Too many buckets to push down: check every key in Go.
		return s.countInGo(ctx, tx, "SELECT key "+cond, asOf, f)
	}
	mod := f != nil && f.Partition.Kind == filter.Mod
	countSQL := "SELECT count(*) " + cond
	if mod {
		countSQL += " AND modhash IS NOT NULL"
	}
	var n int64
	if err := tx.QueryRowContext(ctx, countSQL, clampSCN(asOf)).Scan(&n); err != nil {
		return 0, s.readErr("count rows", err)
	}
	if !mod {
		return uint64(n), nil
	}
	c, err := s.countInGo(ctx, tx, "SELECT key "+cond+" AND modhash IS NULL", asOf, f)
	return uint64(n) + c, err
}

func (s *Store) countInGo(ctx context.Context, tx *sql.Tx, query string, asOf uint64, f *filter.Filter) (uint64, error) {
	rows, err := tx.QueryContext(ctx, query, clampSCN(asOf))
	if err != nil {
		return 0, s.readErr("count rows", err)
	}
	defer rows.Close()
	var n uint64
	var key sql.RawBytes
	for rows.Next() {
		if err := rows.Scan(&key); err != nil {
			return 0, s.readErr("count rows", err)
		}
		if f.Partition.MatchKey(key) {
			n++
		}
	}
	if err := rows.Err(); err != nil {
		return 0, s.readErr("count rows", err)
	}
	return n, nil
}

// Log implements store.Store. The low watermark check and the read of the
// windows share one read transaction, so that a concurrent Purge can never
// make a page skip windows the check said were held.
func (s *Store) Log(ctx context.Context, q store.LogQuery) (store.LogPage, error) {
	page := store.LogPage{Frames: q.Dst[:0], Last: q.After}
	if q.MaxBytes <= 0 {
		return page, fmt.Errorf("databus: sqlitestore: log: MaxBytes %d must be > 0", q.MaxBytes)
	}
	f := q.Filter
	if f != nil && f.All() {
		f = nil
	}
	tx, err := s.r.BeginTx(ctx, nil)
	if err != nil {
		return page, s.readErr("log", err)
	}
	defer tx.Rollback()
	var lw int64
	if err := tx.QueryRowContext(ctx, "SELECT low_watermark FROM meta WHERE id = 1").Scan(&lw); err != nil {
		return page, s.readErr("log", err)
	}
	if q.After < uint64(lw) {
		return page, &store.NotHeldError{After: q.After, LowWatermark: uint64(lw)}
	}
	if q.After >= math.MaxInt64 || q.UpTo <= q.After {
		return page, nil
	}
	rows, err := tx.QueryContext(ctx, "SELECT scn, frames FROM log WHERE scn > ? AND scn <= ? ORDER BY scn", int64(q.After), clampSCN(q.UpTo))
	if err != nil {
		return page, s.readErr("log", err)
	}
	defer rows.Close()
	out := page.Frames
	for rows.Next() {
		var scn int64
		var fr sql.RawBytes
		if err := rows.Scan(&scn, &fr); err != nil {
			return page, s.readErr("log", err)
		}
		mark := len(out)
		if f == nil {
			out = append(out, fr...)
		} else if out, err = appendFiltered(out, fr, f); err != nil {
			return page, fmt.Errorf("databus: sqlitestore: log window %d: %w", scn, err)
		}
		if page.Windows > 0 && len(out) > q.MaxBytes {
			out = out[:mark]
			break
		}
		page.Windows++
		page.Last = uint64(scn)
	}
	if err := rows.Err(); err != nil {
		return page, s.readErr("log", err)
	}
	page.Frames = out
	return page, nil
}

// appendFiltered appends the frames of b that f passes.
func appendFiltered(dst, b []byte, f *filter.Filter) ([]byte, error) {
	for len(b) > 0 {
		n, err := event.FrameLen(b)
		if err != nil {
			return dst, err
		}
		if n > len(b) {
			return dst, event.ErrShort
		}
		h, _ := event.PeekHeader(b)
		if f.Match(h) {
			dst = append(dst, b[:n]...)
		}
		b = b[n:]
	}
	return dst, nil
}

// Schemas implements store.Store.
func (s *Store) Schemas(ctx context.Context) ([]schema.Table, error) {
	rows, err := s.r.QueryContext(ctx, "SELECT def FROM schemas ORDER BY source, version")
	if err != nil {
		return nil, s.readErr("schemas", err)
	}
	defer rows.Close()
	var out []schema.Table
	for rows.Next() {
		var def sql.RawBytes
		if err := rows.Scan(&def); err != nil {
			return nil, s.readErr("schemas", err)
		}
		var t schema.Table
		if err := json.Unmarshal(def, &t); err != nil {
			return nil, fmt.Errorf("databus: sqlitestore: schemas: corrupt schema: %w", err)
		}
		out = append(out, t)
	}
	if err := rows.Err(); err != nil {
		return nil, s.readErr("schemas", err)
	}
	return out, nil
}

// Seeds implements store.Store.
func (s *Store) Seeds(ctx context.Context) ([]store.SeedProgress, error) {
	rows, err := s.r.QueryContext(ctx, "SELECT tbl, run, cursor, rows, done, started, updated FROM seeds ORDER BY tbl")
	if err != nil {
		return nil, s.readErr("seeds", err)
	}
	defer rows.Close()
	var out []store.SeedProgress
	for rows.Next() {
		var sp store.SeedProgress
		var n int64
		var started, updated sql.NullInt64
		if err := rows.Scan(&sp.Table, &sp.Run, &sp.Cursor, &n, &sp.Done, &started, &updated); err != nil {
			return nil, s.readErr("seeds", err)
		}
		sp.Rows = uint64(n)
		sp.Started, sp.Updated = timeOf(started), timeOf(updated)
		out = append(out, sp)
	}
	if err := rows.Err(); err != nil {
		return nil, s.readErr("seeds", err)
	}
	return out, nil
}

func timeOf(v sql.NullInt64) time.Time {
	if !v.Valid {
		return time.Time{}
	}
	return time.Unix(0, v.Int64).UTC()
}
