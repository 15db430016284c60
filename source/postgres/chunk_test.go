package postgres

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"os"
	"reflect"
	"runtime"
	"runtime/metrics"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/databus-go/databus/event"
	"github.com/databus-go/databus/internal/dbtest"
	"github.com/databus-go/databus/source"
)

// noChunks makes every transaction one window: the adapter's behaviour
// before chunks, the reference of the chunked runs.
const noChunks = 1 << 40

// runUntil runs a fresh Source for cfg from the slot's start until a window
// with SCN >= scn arrived, and returns the windows up to scn and the runner
// (for its chunk counts). The spill directory must be empty once Run
// returned.
func runUntil(t *testing.T, cfg Config, scn uint64) ([]*source.Window, *runner) {
	t.Helper()
	s, _ := open(t, cfg)
	r := startRun(t, s, source.Position{})
	ws := r.waitSCN(t, scn, 90*time.Second)
	r.stop(t)
	if files := spillFiles(t, cfg); len(files) != 0 {
		t.Errorf("spill files left after Run returned: %v", files)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(spillPath(cfg.StateDir)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("spill directory after Close: %v", err)
	}
	return ws, r
}

// spillFiles lists the spill directory (nil when it does not exist).
func spillFiles(t testing.TB, cfg Config) []string {
	t.Helper()
	ents, err := os.ReadDir(spillPath(cfg.StateDir))
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range ents {
		names = append(names, e.Name())
	}
	return names
}

// begin opens a transaction on a connection of its own.
func begin(t *testing.T, db *sql.DB) *sql.Tx {
	t.Helper()
	tx, err := db.Begin()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = tx.Rollback() })
	return tx
}

func txExec(t *testing.T, tx *sql.Tx, stmts ...string) {
	t.Helper()
	for _, q := range stmts {
		if _, err := tx.Exec(q); err != nil {
			t.Fatalf("%s: %v", q, err)
		}
	}
}

// TestLargeTransactionChunks: large transactions, streamed by the server
// (protocol v2, tiny logical_decoding_work_mem) while other transactions
// commit, with a rolled-back subtransaction, a schema change, a TRUNCATE,
// key changes, a concurrent streamed transaction that commits first and one
// that aborts, yield the same windows however they are read: protocol 1
// (the server sends each transaction whole at its commit) or 2 (spilled by
// the adapter until the commit), whole or in small chunks. The reference
// is protocol 1 without chunks: the windows the adapter always produced.
func TestLargeTransactionChunks(t *testing.T) {
	t.Parallel()
	srv := dbtest.SharedPostgres(t)
	e := newEnv(t, srv, "public.big", "public.small")
	e.cfg.ConnString += "&logical_decoding_work_mem=64kB"
	e.exec(t, "CREATE TABLE big (id int PRIMARY KEY, v text)", "CREATE TABLE small (id int PRIMARY KEY, n int)")
	s, _ := open(t, e.cfg) // creates the slot before the workload
	s.Close()

	a := begin(t, e.db)
	txExec(t, a, "INSERT INTO big SELECT g, 'a ' || g FROM generate_series(1, 20000) g")
	e.exec(t, "INSERT INTO small VALUES (1, 1)")
	b := begin(t, e.db)
	txExec(t, b, "INSERT INTO big SELECT g, 'b ' || g FROM generate_series(100001, 110000) g")
	txExec(t, a, "SAVEPOINT s1", "INSERT INTO big SELECT g, 'gone' FROM generate_series(200001, 205000) g")
	e.exec(t, "INSERT INTO small VALUES (2, 2)")
	txExec(t, a, "ROLLBACK TO SAVEPOINT s1")
	c := begin(t, e.db)
	txExec(t, c, "INSERT INTO big SELECT g, 'aborted' FROM generate_series(300001, 305000) g")
	if err := b.Commit(); err != nil {
		t.Fatal(err)
	}
	txExec(t, a, "UPDATE big SET v = v || '!' WHERE id % 7 = 0")
	if err := c.Rollback(); err != nil {
		t.Fatal(err)
	}
	e.exec(t, "INSERT INTO small VALUES (3, 3)")
	txExec(t, a,
		"ALTER TABLE big ADD COLUMN extra int",
		"INSERT INTO big SELECT g, 'x', g FROM generate_series(20001, 23000) g",
		"SAVEPOINT s2", "DELETE FROM big WHERE id % 11 = 0 AND id <= 20000", "RELEASE SAVEPOINT s2",
		"UPDATE big SET id = id + 1000000 WHERE id % 13 = 1 AND id <= 5000",
		"TRUNCATE small", "INSERT INTO small VALUES (10, 10)")
	if err := a.Commit(); err != nil {
		t.Fatal(err)
	}
	e.exec(t, "INSERT INTO small VALUES (11, 11)")

	// The end: the SCN of the last window, from a protocol 2 run (which
	// has heartbeats to stop at).
	cfg := e.cfg
	cfg.ChunkBytes, cfg.ChunkEvents = noChunks, 1<<30
	s, _ = open(t, cfg)
	first := dataWindows(captureUntilMark(t, e, s, source.Position{}))
	s.Close()
	if len(first) != 6 {
		t.Fatalf("%d data windows, want 6", len(first))
	}
	end := first[len(first)-1].SCN
	var streamed int64
	if err := e.db.QueryRow("SELECT stream_txns FROM pg_stat_replication_slots WHERE slot_name = $1", e.name).Scan(&streamed); err != nil {
		t.Fatal(err)
	}
	if streamed < 3 {
		t.Fatalf("the server streamed %d transactions, want at least 3", streamed)
	}

	cfg.ProtocolVersion = 1
	ref, _ := runUntil(t, cfg, end)
	want := dataWindows(ref)
	checkWindows(t, want)
	if !reflect.DeepEqual(want, first) { // cmp.Diff takes seconds over these windows
		t.Fatalf("protocol 2 unchunked differs from protocol 1 unchunked (-v1 +v2):\n%s", cmp.Diff(want, first))
	}
	rows := func(w *source.Window) (n int) {
		for _, e := range w.Events {
			if e.Kind == event.KindData {
				n++
			}
		}
		return n
	}
	// small 1, small 2, b, small 3, a, small 11: commit order.
	if n := rows(want[2]); n != 10000 {
		t.Fatalf("window of b: %d rows", n)
	}
	big := want[4]
	reg := newRegistry(t, nil)
	schemaChanges, truncates := 0, 0
	for _, w := range want {
		for i := range w.Events {
			ev := &w.Events[i]
			reg.observe(w, ev)
			if ev.Kind == event.KindSchemaChange && w == big {
				schemaChanges++
			}
			if ev.Kind == event.KindData && ev.Op == event.OpInsert && w == big {
				if row, _ := reg.decode(ev); row["v"] == "gone" {
					t.Fatalf("a row of the rolled-back subtransaction: %v", row)
				}
			}
		}
	}
	for _, d := range reg.changes {
		if d.Truncate {
			truncates++
		}
	}
	// In the large window: big v2 (ADD COLUMN) and the truncate of small
	// (big v1 and small v1 came with the first windows of each).
	if schemaChanges != 2 || truncates != 1 {
		t.Fatalf("the large window has %d schema-change frames (want 2) and the stream %d truncates (want 1)", schemaChanges, truncates)
	}

	for _, c := range []struct {
		name   string
		proto  int
		bytes  int64
		events int
	}{
		{"v1 chunked by bytes", 1, 4096, 1 << 30},
		{"v2 chunked by bytes", 2, 4096, 1 << 30},
		{"v2 chunked by events", 2, noChunks, 1000},
	} {
		cfg.ProtocolVersion, cfg.ChunkBytes, cfg.ChunkEvents = c.proto, c.bytes, c.events
		ws, r := runUntil(t, cfg, end)
		got := dataWindows(ws)
		if !reflect.DeepEqual(want, got) {
			t.Fatalf("%s: differs from the reference (-want +got):\n%s", c.name, cmp.Diff(want, got))
		}
		if r.chunks < 30 || r.abandoned != 0 {
			t.Fatalf("%s: %d chunks, %d abandoned; want many chunks, none abandoned", c.name, r.chunks, r.abandoned)
		}
		t.Logf("%s: %d chunks", c.name, r.chunks)
	}
}

// heapInUse is the runtime's HeapInuse (objects and the free space of
// spans in use).
func heapInUse() int64 {
	s := []metrics.Sample{{Name: "/memory/classes/heap/objects:bytes"}, {Name: "/memory/classes/heap/unused:bytes"}}
	metrics.Read(s)
	return int64(s[0].Value.Uint64() + s[1].Value.Uint64())
}

// TestLargeTransactionMemory: a 200k-row transaction (about 60 MB of
// events) passes through the adapter while its heap stays within a small
// fraction of that: streamed (spilled to disk, replayed in chunks) and
// plain (chunked as it is read). The consumer keeps nothing.
func TestLargeTransactionMemory(t *testing.T) {
	srv := dbtest.SharedPostgres(t)
	for _, proto := range []int{2, 1} {
		t.Run("v"+strconv.Itoa(proto), func(t *testing.T) {
			e := newEnv(t, srv, "public.big")
			e.cfg.ConnString += "&logical_decoding_work_mem=64kB"
			e.cfg.ProtocolVersion = proto
			e.exec(t, "CREATE TABLE big (id int PRIMARY KEY, v text)")
			s, _ := open(t, e.cfg)
			const n = 200_000
			e.exec(t, fmt.Sprintf("INSERT INTO big SELECT g, repeat('x', 200) || g FROM generate_series(1, %d) g", n))

			runtime.GC()
			base := heapInUse()
			var peak, peakHeld, peakSpilled atomic.Int64
			sample := func() {
				st := s.Stats()
				storeMax(&peak, heapInUse())
				storeMax(&peakHeld, st.HeldBytes)
				storeMax(&peakSpilled, st.SpilledBytes)
			}
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			var wg sync.WaitGroup
			wg.Go(func() {
				tick := time.NewTicker(time.Millisecond)
				defer tick.Stop()
				for {
					select {
					case <-ctx.Done():
						return
					case <-tick.C:
						sample()
					}
				}
			})
			var rows, chunks, windows int
			var size int64 // the events' memory had they been held whole
			errDone := errors.New("done")
			start := time.Now()
			err := s.Run(ctx, source.Position{}, func(_ context.Context, w *source.Window) error {
				sample()
				if w.Partial {
					chunks++
				}
				for _, ev := range w.Events {
					if ev.Kind != event.KindData {
						continue
					}
					rows++
					if k, err := event.DecodeKey(ev.Key); err != nil || k[0] != int64(rows) {
						return fmt.Errorf("row %d has key %v (%v)", rows, k, err)
					}
					size += int64(len(ev.Key)+len(ev.Payload)+len(ev.Before)) + eventOverhead
				}
				if !w.Partial && len(w.Events) > 0 {
					windows++
					return errDone
				}
				return nil
			})
			elapsed := time.Since(start)
			cancel()
			wg.Wait()
			if !errors.Is(err, errDone) {
				t.Fatalf("Run: %v", err)
			}
			if rows != n || windows != 1 {
				t.Fatalf("%d rows in %d windows, want %d in 1", rows, windows, n)
			}
			grew := peak.Load() - base
			t.Logf("protocol %d: %d rows in %v (%.0f rows/s), %d chunks; events %.1f MiB; heap in use %.1f MiB before, peak +%.1f MiB; held at most %.1f MiB in memory, %.1f MiB spilled",
				proto, rows, elapsed.Round(time.Millisecond), float64(rows)/elapsed.Seconds(), chunks, mib(size), mib(base), mib(grew), mib(peakHeld.Load()), mib(peakSpilled.Load()))
			if grew > size/4 {
				t.Errorf("the heap grew by %.1f MiB for a transaction of %.1f MiB", mib(grew), mib(size))
			}
			if held := peakHeld.Load(); held > 2*DefaultChunkBytes {
				t.Errorf("held %d bytes, above twice the chunk size", held)
			}
			if proto == 2 && peakSpilled.Load() < size/4 {
				t.Errorf("spilled at most %d bytes of %d", peakSpilled.Load(), size)
			}
			if chunks < 10 {
				t.Errorf("%d chunks", chunks)
			}
			if files := spillFiles(t, e.cfg); len(files) != 0 {
				t.Errorf("spill files left: %v", files)
			}
		})
	}
}

func mib(n int64) float64 { return float64(n) / (1 << 20) }

func storeMax(a *atomic.Int64, v int64) {
	for {
		old := a.Load()
		if v <= old || a.CompareAndSwap(old, v) {
			return
		}
	}
}

// TestSpillFilesLifetime: a streamed transaction's spill file exists while
// it is open, and is removed by its abort, by a reconnection (the server
// streams it again, into a new file), by its commit and when Run returns;
// Open removes the files a crashed process left; Close removes the
// directory.
func TestSpillFilesLifetime(t *testing.T) {
	t.Parallel()
	srv := dbtest.SharedPostgres(t)
	e := newEnv(t, srv, "public.big")
	e.cfg.ConnString += "&logical_decoding_work_mem=64kB"
	e.exec(t, "CREATE TABLE big (id int PRIMARY KEY, v text)")
	stale := spillPath(e.cfg.StateDir)
	if err := os.MkdirAll(stale, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(stale+"/xid-1-123.spill", []byte("left by a crash"), 0o600); err != nil {
		t.Fatal(err)
	}
	s, _ := open(t, e.cfg)
	if files := spillFiles(t, e.cfg); len(files) != 0 {
		t.Fatalf("Open left %v", files)
	}
	r := startRun(t, s, source.Position{})
	waitFiles := func(what string, want int) []string {
		t.Helper()
		deadline := time.Now().Add(20 * time.Second)
		for {
			files := spillFiles(t, e.cfg)
			if len(files) == want {
				return files
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s: spill files %v, want %d", what, files, want)
			}
			time.Sleep(10 * time.Millisecond)
		}
	}

	aborted := begin(t, e.db)
	txExec(t, aborted, "INSERT INTO big SELECT g, 'aborted' FROM generate_series(1, 5000) g")
	waitFiles("an open streamed transaction", 1)
	if err := aborted.Rollback(); err != nil {
		t.Fatal(err)
	}
	waitFiles("after its abort", 0)

	kept := begin(t, e.db)
	txExec(t, kept, "INSERT INTO big SELECT g, 'kept' FROM generate_series(1, 5000) g")
	before := waitFiles("an open streamed transaction", 1)
	// Cut the replication session: the transaction is streamed again.
	if _, err := e.db.Exec("SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots WHERE slot_name = $1", e.name); err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(20 * time.Second); s.Stats().Reconnects == 0; time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("no reconnection")
		}
	}
	for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		if files := spillFiles(t, e.cfg); len(files) == 1 && files[0] != before[0] {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("spill files after the reconnection: %v (before: %v)", spillFiles(t, e.cfg), before)
		}
	}
	txExec(t, kept, "INSERT INTO big VALUES (5001, 'last')")
	if err := kept.Commit(); err != nil {
		t.Fatal(err)
	}
	end := e.mark(t)
	ws := dataWindows(r.waitSCN(t, end, 30*time.Second))
	if len(ws) != 1 || len(ws[0].Events) != 5002 { // a schema change and 5001 rows
		t.Fatalf("windows: %d, events %d", len(ws), len(ws[len(ws)-1].Events))
	}
	waitFiles("after the commit", 0)

	still := begin(t, e.db)
	txExec(t, still, "INSERT INTO big SELECT g, 'open' FROM generate_series(10001, 15000) g")
	waitFiles("an open streamed transaction", 1)
	r.stop(t)
	waitFiles("after Run returned", 0)
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(spillPath(e.cfg.StateDir)); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("spill directory after Close: %v", err)
	}
}

// TestChunkedRunInterrupted: Run ending between chunks (emit fails) leaves
// the transaction for the next Run, which emits it again from its start;
// a replication session cut between chunks makes the adapter abandon them
// and emit the transaction again after reconnecting.
func TestChunkedRunInterrupted(t *testing.T) {
	t.Parallel()
	srv := dbtest.SharedPostgres(t)
	for _, proto := range []int{1, 2} {
		e := newEnv(t, srv, "public.big")
		e.cfg.ConnString += "&logical_decoding_work_mem=64kB"
		e.cfg.ProtocolVersion = proto
		e.cfg.ChunkEvents = 1000
		e.exec(t, "CREATE TABLE big (id int PRIMARY KEY, v text)")
		s, _ := open(t, e.cfg)
		const n = 100_000
		e.exec(t, fmt.Sprintf("INSERT INTO big SELECT g, repeat('y', 300) || g FROM generate_series(1, %d) g", n))
		var lsn string
		if err := e.db.QueryRow("SELECT pg_current_wal_lsn()::text").Scan(&lsn); err != nil {
			t.Fatal(err)
		}

		errStop := errors.New("stop")
		chunks := 0
		ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		err := s.Run(ctx, source.Position{}, func(_ context.Context, w *source.Window) error {
			if w.Partial {
				if chunks++; chunks == 3 {
					return errStop
				}
				return nil
			}
			if len(w.Events) > 0 {
				t.Errorf("window %d with %d events before the interruption", w.SCN, len(w.Events))
			}
			return nil
		})
		cancel()
		if !errors.Is(err, errStop) {
			t.Fatalf("v%d: Run = %v, want emit's error", proto, err)
		}
		if files := spillFiles(t, e.cfg); len(files) != 0 {
			t.Fatalf("v%d: spill files after Run: %v", proto, files)
		}

		// Again, cutting the session at the second chunk.
		var cut atomic.Bool
		var r *runner
		r = &runner{changed: make(chan struct{}, 1)}
		rctx, rcancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() {
			done <- s.Run(rctx, source.Position{}, func(_ context.Context, w *source.Window) error {
				r.take(w)
				if w.Partial && !w.Abandon && r.chunks == 2 && !cut.Swap(true) {
					if _, err := e.db.Exec("SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots WHERE slot_name = $1", e.name); err != nil {
						return err
					}
				}
				select {
				case r.changed <- struct{}{}:
				default:
				}
				return nil
			})
		}()
		deadline := time.Now().Add(60 * time.Second)
		var ws []*source.Window
		for {
			ws = dataWindows(r.snapshot())
			if len(ws) > 0 {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("v%d: no window within 60s", proto)
			}
			time.Sleep(20 * time.Millisecond)
		}
		rcancel()
		if err := <-done; !errors.Is(err, context.Canceled) {
			t.Fatalf("v%d: Run = %v", proto, err)
		}
		rows := 0
		for _, ev := range ws[0].Events {
			if ev.Kind == event.KindData {
				rows++
				if k, _ := event.DecodeKey(ev.Key); k[0] != int64(rows) {
					t.Fatalf("v%d: event %d has key %v", proto, rows, k)
				}
			}
		}
		if len(ws) != 1 || rows != n {
			t.Fatalf("v%d: %d windows, %d rows in the first", proto, len(ws), rows)
		}
		// With protocol 1 the transaction was in flight when the session
		// was cut: its chunks were abandoned. With protocol 2 the chunks
		// come from the spill file, which the cut cannot interrupt.
		if proto == 1 && (r.abandoned != 1 || s.Stats().Reconnects == 0) {
			t.Fatalf("v%d: %d abandoned, %d reconnects; want 1 abandoned after a reconnection", proto, r.abandoned, s.Stats().Reconnects)
		}
		t.Logf("v%d: %d chunks, %d abandoned", proto, r.chunks, r.abandoned)
	}
}
