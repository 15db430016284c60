package sqlitestore_test

import (
	"context"
	"database/sql"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/databus-go/databus/bootstrap/store"
	"github.com/databus-go/databus/bootstrap/store/sqlitestore"
	"github.com/databus-go/databus/event"
)

// cpuTime returns the CPU time this process used so far. Benchmarks report
// rows per CPU second beside rows/s because the test machines are shared:
// the wall-clock rate there says as much about the neighbours as about us.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// benchRows and benchPayload make the snapshot of the read benchmarks:
// 100k rows whose frames are ~200 bytes (48-byte header, 9-byte key,
// payload, 4-byte trailer).
const (
	benchRows    = 100_000
	benchPayload = 139
)

// benchWindow builds one window at scn with rows upserts of keys from
// firstKey, as the producer would hand it to Apply.
func benchWindow(scn uint64, firstKey int64, rows int, payload []byte) store.Window {
	ts := time.Now().UnixNano()
	w := store.Window{SCN: scn, Timestamp: ts}
	for i := range rows {
		key := event.AppendKeyInt(nil, firstKey+int64(i))
		e := event.Event{Kind: event.KindData, Op: event.OpInsert, SCN: scn, Timestamp: ts, Source: 1 + uint32(i%3), SchemaVersion: 1, Key: key, Payload: payload}
		frame, err := event.AppendFrame(nil, &e)
		if err != nil {
			panic(err)
		}
		w.Frames = append(w.Frames, frame...)
		w.Rows = append(w.Rows, store.Row{Source: e.Source, Key: key, SCN: scn, Op: store.RowUpsert, Frame: frame})
	}
	eow := event.EndOfWindow(scn, ts, uint32(rows), "")
	w.Frames, _ = event.AppendFrame(w.Frames, &eow)
	return w
}

// BenchmarkApply applies batches of 1000 windows of new rows (~200-byte
// frames) and reports rows/s.
func BenchmarkApply(b *testing.B) {
	for _, perWindow := range []int{1, 10} {
		b.Run(fmt.Sprintf("rowsPerWindow=%d", perWindow), func(b *testing.B) {
			s, err := sqlitestore.Open(filepath.Join(b.TempDir(), "apply.db"), sqlitestore.Options{})
			if err != nil {
				b.Fatal(err)
			}
			defer s.Close()
			payload := make([]byte, benchPayload)
			const windows = 1000
			var scn uint64
			var key int64
			batches := make([]*store.Batch, b.N)
			for i := range batches {
				bt := &store.Batch{After: scn}
				for range windows {
					scn++
					bt.Windows = append(bt.Windows, benchWindow(scn, key, perWindow, payload))
					key += int64(perWindow)
				}
				batches[i] = bt
			}
			b.ReportAllocs()
			b.ResetTimer()
			cpu := cpuTime()
			for _, bt := range batches {
				if err := s.Apply(context.Background(), bt); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(b.N*windows*perWindow)/b.Elapsed().Seconds(), "rows/s")
			b.ReportMetric(float64(b.N*windows*perWindow)/(cpuTime()-cpu).Seconds(), "rows/cpu-s")
			b.ReportMetric(float64(b.N*windows)/b.Elapsed().Seconds(), "windows/s")
		})
	}
}

var (
	fixtureOnce sync.Once
	fixturePath string
	fixtureErr  error
	fixtureDir  string
)

// readFixture returns the path of a store holding benchRows rows, built
// once per test binary (TestMain removes it).
func readFixture(b *testing.B) string {
	fixtureOnce.Do(func() {
		fixtureDir, fixtureErr = os.MkdirTemp("", "sqlitestore-bench-")
		if fixtureErr != nil {
			return
		}
		fixturePath = filepath.Join(fixtureDir, "read.db")
		s, err := sqlitestore.Open(fixturePath, sqlitestore.Options{Sync: sqlitestore.SyncNormal})
		if err != nil {
			fixtureErr = err
			return
		}
		defer s.Close()
		payload := make([]byte, benchPayload)
		var scn uint64
		for key := int64(0); key < benchRows; {
			bt := &store.Batch{After: scn}
			for range 100 {
				scn++
				bt.Windows = append(bt.Windows, benchWindow(scn, key, 100, payload))
				key += 100
			}
			if fixtureErr = s.Apply(context.Background(), bt); fixtureErr != nil {
				return
			}
		}
	})
	if fixtureErr != nil {
		b.Fatal(fixtureErr)
	}
	return fixturePath
}

// BenchmarkSnapshot pages through the 100k-row snapshot with MaxRows
// 10000, as the bootstrap server does, and reports rows/s. Each iteration
// also runs the plain SELECT of BenchmarkPlainSelect (the ceiling) and
// reports its rate as plain-rows/s: interleaving the two keeps their ratio
// meaningful on a machine whose load changes during the run.
func BenchmarkSnapshot(b *testing.B) {
	path := readFixture(b)
	s, err := sqlitestore.Open(path, sqlitestore.Options{})
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	db := plainDB(b, path)
	ctx := context.Background()
	var dst, buf []byte
	b.ReportAllocs()
	b.ResetTimer()
	rows, bytes := 0, 0
	var snapTime, plainTime time.Duration
	for range b.N {
		start := time.Now()
		var after *store.Cursor
		for {
			p, err := s.Snapshot(ctx, store.SnapshotQuery{AsOf: 1 << 62, After: after, MaxRows: 10_000, MaxBytes: 64 << 20, Dst: dst})
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
		mid := time.Now()
		buf, _ = plainSelect(b, db, buf)
		plainTime += time.Since(mid)
		snapTime += mid.Sub(start)
	}
	if rows != b.N*benchRows {
		b.Fatalf("read %d rows, want %d", rows, b.N*benchRows)
	}
	b.ReportMetric(float64(rows)/snapTime.Seconds(), "rows/s")
	b.ReportMetric(float64(rows)/plainTime.Seconds(), "plain-rows/s")
	b.ReportMetric(float64(bytes)/snapTime.Seconds()/1e6, "MB/s")
}

// plainDB opens the fixture the way a tool would, with the store's cache
// size.
func plainDB(b *testing.B, path string) *sql.DB {
	db, err := sql.Open("sqlite", "file:"+path+"?mode=ro&_pragma=cache_size(-16384)")
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { db.Close() })
	return db
}

// plainSelect reads every frame of the snapshot table into buf.
func plainSelect(b *testing.B, db *sql.DB, buf []byte) ([]byte, int) {
	rows, err := db.QueryContext(context.Background(), "SELECT frame FROM snapshot")
	if err != nil {
		b.Fatal(err)
	}
	buf = buf[:0]
	n := 0
	var fr sql.RawBytes
	for rows.Next() {
		if err := rows.Scan(&fr); err != nil {
			b.Fatal(err)
		}
		buf = append(buf, fr...)
		n++
	}
	if err := rows.Close(); err != nil {
		b.Fatal(err)
	}
	return buf, n
}

// BenchmarkPlainSelect is the ceiling of BenchmarkSnapshot: a plain
// SELECT frame FROM snapshot over the same file, through database/sql.
func BenchmarkPlainSelect(b *testing.B) {
	db := plainDB(b, readFixture(b))
	var buf []byte
	b.ReportAllocs()
	b.ResetTimer()
	n := 0
	for range b.N {
		var m int
		buf, m = plainSelect(b, db, buf)
		n += m
	}
	if n != b.N*benchRows {
		b.Fatalf("read %d rows, want %d", n, b.N*benchRows)
	}
	b.ReportMetric(float64(n)/b.Elapsed().Seconds(), "rows/s")
	b.SetBytes(int64(len(buf)))
}
