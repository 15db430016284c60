package pgstore

import (
	"context"
	"errors"
	"fmt"
	"math"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgtype"

	"github.com/databus-go/databus/bootstrap/store"
	"github.com/databus-go/databus/event"
	"github.com/databus-go/databus/filter"
)

// ErrBadQuery is wrapped by the errors Snapshot and Log return for a query
// outside the contract (a page bound that is not positive).
var ErrBadQuery = errors.New("databus: bad bootstrap store query")

// readOnly is the transaction of a read that takes several statements and
// must see one state of the store.
var readOnly = pgx.TxOptions{IsoLevel: pgx.RepeatableRead, AccessMode: pgx.ReadOnly}

// filterSQL splits f into what pushDown takes. sources is nil when f keeps
// every source.
func filterSQL(f *filter.Filter) (sources []int64, part partitionSQL) {
	if f == nil {
		return nil, part
	}
	if f.Sources != nil {
		sources = sortedSources(f.Sources)
	}
	switch f.Partition.Kind {
	case filter.Range:
		part.ranges = make([][2]int64, len(f.Partition.Ranges))
		for i, r := range f.Partition.Ranges {
			part.ranges[i] = [2]int64{r.Lo, r.Hi}
		}
	case filter.Mod:
		part.n = f.Partition.N
		part.buckets = []int64{}
		for b, on := range f.Partition.Buckets {
			if on {
				part.buckets = append(part.buckets, int64(b))
			}
		}
	}
	return sources, part
}

// matchRow is the filter's verdict on a snapshot row, the final word over
// the SQL push-down.
func matchRow(f *filter.Filter, source uint32, key []byte) bool {
	if f == nil {
		return true
	}
	if f.Sources != nil {
		if _, ok := f.Sources[source]; !ok {
			return false
		}
	}
	return f.Partition.MatchKey(key)
}

// Snapshot returns one page of the snapshot at q.AsOf, in (source, key)
// order after q.After (see store.Store). The page's Next is nil exactly
// when no row passing q.Filter follows the page in the store as this call
// read it. Each SQL statement reads one consistent state; a page may take
// more than one statement (when the filter rejects rows the push-down
// kept, or when the page size estimate fell short), which the contract
// allows: only rows unchanged during the paging are promised.
func (s *Store) Snapshot(ctx context.Context, q store.SnapshotQuery) (store.SnapshotPage, error) {
	if q.MaxRows <= 0 || q.MaxBytes <= 0 {
		return store.SnapshotPage{}, fmt.Errorf("%w: snapshot page bounds MaxRows %d and MaxBytes %d must be positive", ErrBadQuery, q.MaxRows, q.MaxBytes)
	}
	page := store.SnapshotPage{Frames: q.Dst[:0]}
	if q.Filter != nil && q.Filter.Sources != nil && len(q.Filter.Sources) == 0 {
		return page, nil
	}
	sql, pdArgs := s.snapshotSQL(q.Filter)

	// The cursor starts before every row: sources are >= 0.
	afterSource, afterKey := int64(-1), []byte{}
	if q.After != nil {
		afterSource, afterKey = int64(q.After.Source), q.After.Key
		if afterKey == nil {
			afterKey = []byte{}
		}
	}
	asOf := clampSCN(q.AsOf)
	var nextKey []byte // key of the page's last row, owned
	var nextSource uint32
	var more bool
	err := s.withConn(ctx, true, func(c *conn) error {
		page.Frames, page.Rows, nextKey, more = q.Dst[:0], 0, nextKey[:0], false
		afterSource, afterKey := afterSource, afterKey
		args := append([]any{nil, nil, asOf, nil}, pdArgs...)
		for {
			limit := s.snapshotLimit(q.MaxRows-page.Rows, q.MaxBytes-len(page.Frames))
			args[0], args[1], args[3] = afterSource, afterKey, limit
			rows, err := c.Query(ctx, sql, args...)
			if err != nil {
				return err
			}
			examined := 0
			var lastSource int64
			var lastKey []byte
			for rows.Next() {
				examined++
				var src int64
				var key, frame pgtype.DriverBytes
				if err := rows.Scan(&src, &key, &frame); err != nil {
					rows.Close()
					return err
				}
				lastSource, lastKey = src, key
				if !matchRow(q.Filter, uint32(src), key) {
					continue
				}
				if page.Rows >= q.MaxRows || page.Rows > 0 && len(page.Frames)+len(frame) > q.MaxBytes {
					more = true
					break
				}
				page.Frames = append(page.Frames, frame...)
				page.Rows++
				nextSource, nextKey = uint32(src), append(nextKey[:0], key...)
			}
			// The last examined key must outlive the rows it came from.
			afterSource, afterKey = lastSource, append([]byte(nil), lastKey...)
			rows.Close()
			if err := rows.Err(); err != nil {
				return err
			}
			if more || examined < limit {
				return nil // full, or nothing more in the store
			}
		}
	})
	if err != nil {
		return store.SnapshotPage{}, fmt.Errorf("databus: bootstrap store snapshot: %w", err)
	}
	if page.Rows > 0 {
		s.frameSize.Store(int64(len(page.Frames) / page.Rows))
	}
	if more {
		page.Next = &store.Cursor{Source: nextSource, Key: nextKey}
	}
	return page, nil
}

// snapshotSQL returns the query of a snapshot page with filter f and the
// push-down's parameters ($5 on); $1, $2 are the cursor, $3 AsOf, $4 the
// row limit. The plan must be an ordered scan of the primary key, which
// the sessions' enable_sort=off guarantees (see Open).
func (s *Store) snapshotSQL(f *filter.Filter) (string, []any) {
	sources, part := filterSQL(f)
	pd := pushDown(sources, part, true, 5)
	return "SELECT source, key, frame FROM " + s.q.schema + ".snapshot" +
		" WHERE (source, key) > ($1, $2) AND scn <= $3 AND NOT deleted" + pd.sql +
		" ORDER BY source, key LIMIT $4", pd.args
}

// snapshotLimit is how many rows to ask for to fill a page with rows left
// rows and bytes left bytes, plus one that tells whether more follow. It
// uses the frame size of the last page read, so that a page bounded by
// bytes does not fetch (and drop) many more rows than it can hold; when the
// estimate falls short, Snapshot asks again for the rest.
func (s *Store) snapshotLimit(rows, bytes int) int {
	if bytes <= 0 {
		return 1 // only the row that tells whether more follow
	}
	n := rows + 1
	if avg := int(s.frameSize.Load()); avg > 0 {
		// No margin: when rows run smaller than the estimate, a second
		// query for the few rows missing costs less than fetching and
		// dropping a margin on every page.
		if est := bytes/avg + 2; est < n {
			n = est
		}
	}
	return max(n, 1)
}

// CountRows returns the number of live rows with SCN <= asOf that pass f.
// The filter is evaluated exactly in SQL, except for the MOD bucket of
// integer keys of magnitude >= 2^63 (modhash NULL), whose keys are read and
// checked in Go; both statements run in one read-only transaction.
func (s *Store) CountRows(ctx context.Context, asOf uint64, f *filter.Filter) (uint64, error) {
	if f != nil && f.Sources != nil && len(f.Sources) == 0 {
		return 0, nil
	}
	sources, part := filterSQL(f)
	// Without keepNull the MOD condition is exact: a NULL modhash makes it
	// NULL, which WHERE treats as false; those rows are counted below.
	pd := pushDown(sources, part, false, 2)
	where := " WHERE scn <= $1 AND NOT deleted"
	var n uint64
	err := s.withConn(ctx, true, func(c *conn) error {
		return pgx.BeginTxFunc(ctx, c, readOnly, func(tx pgx.Tx) error {
			var count int64
			args := append([]any{clampSCN(asOf)}, pd.args...)
			if err := tx.QueryRow(ctx, "SELECT count(*) FROM "+s.q.schema+".snapshot"+where+pd.sql, args...).Scan(&count); err != nil {
				return err
			}
			n = uint64(count)
			if part.n == 0 {
				return nil
			}
			spd := pushDown(sources, partitionSQL{}, false, 2)
			rows, err := tx.Query(ctx, "SELECT source, key FROM "+s.q.schema+".snapshot"+where+" AND modhash IS NULL"+spd.sql,
				append([]any{clampSCN(asOf)}, spd.args...)...)
			if err != nil {
				return err
			}
			defer rows.Close()
			for rows.Next() {
				var src int64
				var key pgtype.DriverBytes
				if err := rows.Scan(&src, &key); err != nil {
					return err
				}
				if matchRow(f, uint32(src), key) {
					n++
				}
			}
			return rows.Err()
		})
	})
	if err != nil {
		return 0, fmt.Errorf("databus: bootstrap store count rows: %w", err)
	}
	return n, nil
}

// logSizeBatch is how many window sizes Log reads per step.
const logSizeBatch = 1024

// Log returns the log windows with SCN in (q.After, q.UpTo], oldest first,
// whole, filtered (see store.Store), at most q.MaxBytes of them unless the
// first window alone is larger. It reads in one REPEATABLE READ, READ ONLY
// transaction, so the low-watermark check and the windows describe the same
// state: a Purge that commits meanwhile cannot make it skip a window. It
// fails with *store.NotHeldError when q.After < LowWatermark, and with an
// error wrapping event.ErrCorrupt when a stored window does not parse.
func (s *Store) Log(ctx context.Context, q store.LogQuery) (store.LogPage, error) {
	if q.MaxBytes <= 0 {
		return store.LogPage{}, fmt.Errorf("%w: log page bound MaxBytes %d must be positive", ErrBadQuery, q.MaxBytes)
	}
	page := store.LogPage{Frames: q.Dst[:0], Last: q.After}
	err := s.withConn(ctx, true, func(c *conn) error {
		page.Frames, page.Windows, page.Last = q.Dst[:0], 0, q.After
		return pgx.BeginTxFunc(ctx, c, readOnly, func(tx pgx.Tx) error {
			var lw int64
			var empty bool
			if err := tx.QueryRow(ctx, s.q.logLW).Scan(&lw, &empty); err != nil {
				return err
			}
			if !empty && q.After < uint64(lw) {
				return &store.NotHeldError{After: q.After, LowWatermark: uint64(lw)}
			}
			if q.After >= q.UpTo || q.After >= math.MaxInt64 {
				return nil
			}
			after, upTo := int64(q.After), clampSCN(q.UpTo)
			for {
				last, fit, more, err := s.logFit(ctx, tx, after, upTo, q.MaxBytes-len(page.Frames), page.Windows == 0)
				if err != nil || fit == 0 {
					return err
				}
				if err := s.logRead(ctx, tx, after, last, q.Filter, &page); err != nil {
					return err
				}
				after = last
				page.Last = uint64(last)
				if !more {
					return nil
				}
			}
		})
	})
	if err != nil {
		var nh *store.NotHeldError
		if errors.As(err, &nh) {
			return store.LogPage{}, nh
		}
		return store.LogPage{}, fmt.Errorf("databus: bootstrap store log: %w", err)
	}
	return page, nil
}

// logFit reads the sizes of the windows after after and returns the SCN of
// the last one that fits in budget bytes (the first one whatever its size
// when first is set), how many fit, and whether the page may take more
// (every size read fitted and more windows may follow).
func (s *Store) logFit(ctx context.Context, tx pgx.Tx, after, upTo int64, budget int, first bool) (last int64, fit int, more bool, err error) {
	rows, err := tx.Query(ctx, s.q.logSizes, after, upTo, logSizeBatch)
	if err != nil {
		return 0, 0, false, err
	}
	defer rows.Close()
	read, total := 0, 0
	stopped := false
	for rows.Next() {
		read++
		var scn int64
		var size int
		if err := rows.Scan(&scn, &size); err != nil {
			return 0, 0, false, err
		}
		if stopped {
			continue
		}
		if total+size > budget && !(first && fit == 0) {
			stopped = true
			continue
		}
		total += size
		last, fit = scn, fit+1
	}
	if err := rows.Err(); err != nil {
		return 0, 0, false, err
	}
	return last, fit, !stopped && read == logSizeBatch, nil
}

// logRead appends the windows in (after, last] to page, filtered.
func (s *Store) logRead(ctx context.Context, tx pgx.Tx, after, last int64, f *filter.Filter, page *store.LogPage) error {
	rows, err := tx.Query(ctx, s.q.logRead, after, last)
	if err != nil {
		return err
	}
	defer rows.Close()
	all := f == nil || f.All()
	for rows.Next() {
		var scn int64
		var frames pgtype.DriverBytes
		if err := rows.Scan(&scn, &frames); err != nil {
			return err
		}
		if all {
			page.Frames = append(page.Frames, frames...)
		} else if page.Frames, err = appendFiltered(page.Frames, frames, f); err != nil {
			return fmt.Errorf("window %d: %w", scn, err)
		}
		page.Windows++
	}
	return rows.Err()
}

// appendFiltered appends the frames of one window that pass f to dst.
func appendFiltered(dst, window []byte, f *filter.Filter) ([]byte, error) {
	for off := 0; off < len(window); {
		n, err := event.FrameLen(window[off:])
		if err != nil {
			return dst, fmt.Errorf("frame at offset %d: %w", off, err)
		}
		if n > len(window)-off {
			return dst, fmt.Errorf("%w: frame at offset %d runs past the window's end", event.ErrCorrupt, off)
		}
		h, _ := event.PeekHeader(window[off : off+n])
		if f.Match(h) {
			dst = append(dst, window[off:off+n]...)
		}
		off += n
	}
	return dst, nil
}
