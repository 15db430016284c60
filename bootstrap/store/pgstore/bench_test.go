package pgstore

import (
	"context"
	"fmt"
	"math"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgtype"

	"github.com/databus-go/databus/bootstrap/store"
	"github.com/databus-go/databus/event"
	"github.com/databus-go/databus/filter"
)

// payload140 makes frames of about 200 bytes with a 9-byte key.
var payload140 = strings.Repeat("p", 140)

// benchBatch builds a batch of windows × rows upserts after after, keys
// starting at key0.
func benchBatch(b *testing.B, after uint64, windows, rows int, key0 int64) *store.Batch {
	batch := &store.Batch{After: after}
	k := key0
	for w := 1; w <= windows; w++ {
		cs := make([]change, rows)
		for i := range cs {
			cs[i] = change{1, ikey(k), payload140}
			k++
		}
		batch.Windows = append(batch.Windows, window(b, after+uint64(w), cs...))
	}
	return batch
}

// BenchmarkApply measures row upserts per second through Apply, in batches
// of 10 windows of 100 rows (about 200-byte frames), inserting new keys and
// updating existing ones.
func BenchmarkApply(b *testing.B) {
	for _, mode := range []string{"insert", "update"} {
		b.Run(mode, func(b *testing.B) {
			s := open(b, freshDB(b), Options{})
			const windows, rows = 10, 100
			const keys = 100_000
			head := uint64(0)
			if mode == "update" {
				for k := int64(0); k < keys; k += windows * rows {
					mustApply(b, s, benchBatch(b, head, windows, rows, k))
					head += windows
				}
			}
			batches := make([]*store.Batch, 0, 64)
			for i := 0; i < cap(batches); i++ {
				batches = append(batches, benchBatch(b, 0, windows, rows, int64(i*windows*rows)%keys))
			}
			b.ReportAllocs()
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				bt := batches[i%len(batches)]
				// Renumber the windows after the head (frames keep their
				// old SCNs: the store does not read them).
				for w := range bt.Windows {
					scn := head + uint64(w) + 1
					bt.Windows[w].SCN = scn
					for r := range bt.Windows[w].Rows {
						bt.Windows[w].Rows[r].SCN = scn
					}
				}
				bt.After = head
				if err := s.Apply(bg, bt); err != nil {
					b.Fatal(err)
				}
				head += windows
			}
			b.ReportMetric(float64(b.N*windows*rows)/b.Elapsed().Seconds(), "rows/s")
		})
	}
}

// BenchmarkRowWrite compares the two ways of writing folded rows that the
// design considered: unnest() of array parameters (what flush does) and
// COPY into a temporary table followed by INSERT ... SELECT.
func BenchmarkRowWrite(b *testing.B) {
	for _, mode := range []string{"unnest", "copy"} {
		for _, n := range []int{30, 100, 300, 1000, 10000} {
			b.Run(fmt.Sprintf("%s/%d", mode, n), func(b *testing.B) {
				s := open(b, freshDB(b), Options{})
				c, err := s.pool.acquire(bg)
				if err != nil {
					b.Fatal(err)
				}
				defer s.pool.release(c)
				if _, err := c.Exec(bg, `CREATE TEMP TABLE stage (source bigint, key bytea, scn bigint, ts bigint, deleted boolean,
					ikey bigint, modhash bigint, frame bytea) ON COMMIT DELETE ROWS`); err != nil {
					b.Fatal(err)
				}
				f := newFolder()
				b.ReportAllocs()
				b.ResetTimer()
				for i := 0; i < b.N; i++ {
					b.StopTimer()
					for k := 0; k < n; k++ {
						key := ikey(int64(k + (i%10)*n))
						f.add(&store.Row{Source: 1, Key: key, SCN: uint64(i + 1), Op: store.RowUpsert, Frame: frame(b, event.OpInsert, uint64(i+1), 1, key, payload140)}, int64(i))
					}
					b.StartTimer()
					err := pgx.BeginFunc(bg, c, func(tx pgx.Tx) error {
						if mode == "unnest" {
							return s.flush(bg, tx, f)
						}
						return copyFlush(bg, tx, s, f)
					})
					if err != nil {
						b.Fatal(err)
					}
				}
				b.ReportMetric(float64(b.N*n)/b.Elapsed().Seconds(), "rows/s")
			})
		}
	}
}

func copyFlush(ctx context.Context, tx pgx.Tx, s *Store, f *folder) error {
	_, err := tx.CopyFrom(ctx, pgx.Identifier{"stage"}, []string{"source", "key", "scn", "ts", "deleted", "ikey", "modhash", "frame"},
		pgx.CopyFromSlice(f.len(), func(i int) ([]any, error) {
			return []any{f.sources[i], f.keys[i], f.scns[i], f.ts[i], f.deleted[i], f.ikeys[i], f.modhashs[i], f.frames[i]}, nil
		}))
	if err != nil {
		return err
	}
	_, err = tx.Exec(ctx, `INSERT INTO `+s.q.schema+`.snapshot (source, key, scn, ts, deleted, ikey, modhash, frame)
		SELECT * FROM stage ON CONFLICT (source, key) DO UPDATE SET scn = excluded.scn, ts = excluded.ts, deleted = excluded.deleted, frame = excluded.frame`)
	f.reset()
	return err
}

// BenchmarkSnapshot pages through a snapshot of 100k rows of about 200
// bytes (MaxRows 10000; MaxBytes 64 MiB, or 1 MiB), beside the ceiling: one plain SELECT frame FROM
// snapshot over the same rows, on the same connection settings.
func BenchmarkSnapshot(b *testing.B) {
	const total = 100_000
	s := open(b, freshDB(b), Options{})
	head := uint64(0)
	for k := int64(0); k < total; k += 10_000 {
		mustApply(b, s, benchBatch(b, head, 10, 1000, k))
		head += 10
	}
	c, err := pgx.Connect(bg, s.pool.cfg.ConnString())
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close(bg)
	if _, err := c.Exec(bg, "VACUUM ANALYZE "+s.q.schema+".snapshot"); err != nil {
		b.Fatal(err)
	}
	var frameBytes int
	report := func(b *testing.B, rows, bytes int) {
		b.ReportMetric(float64(rows)/b.Elapsed().Seconds(), "rows/s")
		b.ReportMetric(float64(bytes)/b.Elapsed().Seconds()/1e6, "MB/s")
	}
	page := func(b *testing.B, f *filter.Filter, maxBytes int) {
		b.ReportAllocs()
		var dst []byte
		rows, bytes := 0, 0
		for i := 0; i < b.N; i++ {
			var after *store.Cursor
			for {
				p, err := s.Snapshot(bg, store.SnapshotQuery{AsOf: math.MaxUint64, After: after, Filter: f, MaxRows: 10_000, MaxBytes: maxBytes, Dst: dst})
				if err != nil {
					b.Fatal(err)
				}
				rows += p.Rows
				bytes += len(p.Frames)
				dst = p.Frames
				if p.Next == nil {
					break
				}
				after = p.Next
			}
		}
		if f == nil && rows != b.N*total {
			b.Fatalf("read %d rows, want %d", rows, b.N*total)
		}
		frameBytes = bytes / max(rows, 1)
		report(b, rows, bytes)
	}
	b.Run("pages", func(b *testing.B) { page(b, nil, 64<<20) })
	// The server's default page: 1 MiB holds about 5200 rows, so pages
	// end on MaxBytes and the row limit comes from the size estimate.
	b.Run("pages-1MiB", func(b *testing.B) { page(b, nil, 1<<20) })
	b.Run("pages-mod4", func(b *testing.B) {
		part, _ := filter.ParsePartition("mod:1/4")
		page(b, &filter.Filter{Partition: part}, 64<<20)
	})
	b.Run("ceiling", func(b *testing.B) {
		b.ReportAllocs()
		var dst []byte
		rows, bytes := 0, 0
		for i := 0; i < b.N; i++ {
			r, err := c.Query(bg, "SELECT frame FROM "+s.q.schema+".snapshot")
			if err != nil {
				b.Fatal(err)
			}
			dst = dst[:0]
			for r.Next() {
				var fr pgtype.DriverBytes
				if err := r.Scan(&fr); err != nil {
					b.Fatal(err)
				}
				dst = append(dst, fr...)
				rows++
			}
			r.Close()
			if err := r.Err(); err != nil {
				b.Fatal(err)
			}
			bytes += len(dst)
		}
		report(b, rows, bytes)
	})
	b.Logf("%d rows of %d bytes", total, frameBytes)
}
