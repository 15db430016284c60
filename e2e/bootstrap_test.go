package e2e

import (
	"bytes"
	"context"
	"database/sql"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/databus-go/databus/bootstrap"
	"github.com/databus-go/databus/bootstrap/server"
	"github.com/databus-go/databus/bootstrap/store"
	"github.com/databus-go/databus/bootstrap/store/sqlitestore"
	"github.com/databus-go/databus/checkpoint"
	"github.com/databus-go/databus/client"
	"github.com/databus-go/databus/event"
	"github.com/databus-go/databus/relay"
	"github.com/databus-go/databus/schema"
)

// End-to-end tests of the bootstrap service over a SQLite source: a relay
// whose buffer is far smaller than the history, a bootstrap producer
// filling a SQLite store from it, and a bootstrap server over that store,
// all in process and talking HTTP over loopback. Consumers that need more
// history than the relay holds get it from the bootstrap server and return
// to the relay; each test ends by comparing their copy with the source
// tables.
//
//	DATABUS_REQUIRE_SERVERS=1 go test -race -count=1 -run 'Boot' ./e2e/
//	go test -run '^$' -bench 'Catchup' -benchtime 1x ./e2e/

// bootEnv is a SQLite source with a relay, a bootstrap producer and a
// bootstrap server, all stopped by t.Cleanup (servers and producer before
// the store they use, the relay last).
type bootEnv struct {
	db    *sql.DB
	relay *relay.Relay
	store *sqlitestore.Store
	prod  *bootstrap.Producer
	reg   *prometheus.Registry // the producer's metrics
	url   string               // the bootstrap server's base URL
}

// bootStart starts the environment over a new database holding the test
// tables. The producer starts before any write, after the relay's low
// watermark (0): the store's log holds the whole history.
func bootStart(t *testing.T, relayBytes relay.ByteSize) *bootEnv {
	t.Helper()
	path, db := newDB(t)
	e := &bootEnv{db: db, relay: startRelay(t, path, relayBytes), reg: prometheus.NewRegistry()}
	st, err := sqlitestore.Open(filepath.Join(t.TempDir(), "bootstrap.db"), sqlitestore.Options{Sync: sqlitestore.SyncNormal})
	if err != nil {
		t.Fatal(err)
	}
	e.store = st
	t.Cleanup(func() { st.Close() })
	log := warnLogger(t)
	e.prod, err = bootstrap.NewProducer(bootstrap.Config{Relays: []string{relayURL(e.relay)}, LogRetention: bootstrap.Retain(0)}, st, nil, log, e.reg)
	if err != nil {
		t.Fatal(err)
	}
	srv, err := server.New(server.Config{Listen: "127.0.0.1:0"}, st, log, prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	prodDone, srvDone := make(chan error, 1), make(chan error, 1)
	go func() { prodDone <- e.prod.Run(ctx) }()
	go func() { srvDone <- srv.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-prodDone; !errors.Is(err, context.Canceled) {
			t.Errorf("bootstrap producer: %v", err)
		}
		if err := <-srvDone; err != nil {
			t.Errorf("bootstrap server: %v", err)
		}
	})
	select {
	case <-srv.Ready():
	case err := <-srvDone:
		t.Fatalf("bootstrap server: %v", err)
	}
	e.url = "http://" + srv.Addr()
	return e
}

// events returns the data events the producer has committed to the store.
func (e *bootEnv) events(t *testing.T) int {
	t.Helper()
	mfs, err := e.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == "databus_bootstrap_events_applied_total" {
			return int(mf.GetMetric()[0].GetCounter().GetValue())
		}
	}
	t.Fatal("the producer exports no databus_bootstrap_events_applied_total")
	return 0
}

// waitStored waits until the store holds every change committed to the
// source before the call. Writers call it between bursts: the relay's
// buffer is far smaller than the history, and a producer left more than a
// buffer behind would stop with a *bootstrap.GapError.
//
// The source's SCNs are the sequence of its change log (package
// source/sqlite: a window's SCN is the sequence number of the marker that
// closes it): once the store's head is at or past the last sequence number
// drawn, it holds every change committed before.
func (e *bootEnv) waitStored() error {
	var seq uint64
	if err := e.db.QueryRow(`SELECT seq FROM sqlite_sequence WHERE name = '_databus_changelog'`).Scan(&seq); err != nil {
		return fmt.Errorf("reading the change log's sequence: %w", err)
	}
	deadline := time.Now().Add(30 * time.Second)
	for e.prod.Head() < seq {
		if time.Now().After(deadline) {
			return fmt.Errorf("after 30s, the source's change log is at %d, the relay's newest window %d, the bootstrap store's head %d",
				seq, e.relay.Buffer().Info().MaxSCN, e.prod.Head())
		}
		time.Sleep(2 * time.Millisecond)
	}
	return nil
}

// bootTxn writes one transaction of w. The harness writer's random
// statements sometimes break a primary key (an update moving a tag row onto
// another's key); such a transaction rolls back whole, leaving nothing to
// capture, and is not an error here.
func bootTxn(ctx context.Context, w *writer) error {
	if err := w.txn(ctx); err != nil && !strings.Contains(err.Error(), "constraint failed") {
		return err
	}
	return nil
}

// bootBulk writes two transactions, one updating every acct row, the
// other every tag row and deleting a few: many changes for a few
// statements' cost, so that the history grows large in little time. Each
// stays below a sixteenth of a 1 MiB relay buffer, above which the relay
// would spill the window to disk rather than hold it in memory.
func bootBulk(ctx context.Context, w *writer) error {
	if _, err := w.db.ExecContext(ctx, `UPDATE acct SET balance = (balance + ?) % 1000003, txn = ?`, w.rng.IntN(100), w.txnNo()); err != nil {
		return err
	}
	tx, err := w.db.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	defer tx.Rollback()
	n := w.txnNo()
	if _, err := tx.ExecContext(ctx, `UPDATE tag SET val = val + ?, txn = ?`, w.rng.Float64(), n); err != nil {
		return err
	}
	if _, err := tx.ExecContext(ctx, `DELETE FROM tag WHERE k1 = ? AND abs(k2) % 5 = ?`, fmt.Sprintf("k%d", w.rng.IntN(10)), w.rng.IntN(5)); err != nil {
		return err
	}
	return tx.Commit()
}

// bootBurst writes n transactions of w, then one bulk transaction when bulk
// is set, then waits until the bootstrap store holds them.
func (e *bootEnv) bootBurst(ctx context.Context, w *writer, n int, bulk bool) error {
	for i := 0; i < n; i++ {
		if err := bootTxn(ctx, w); err != nil {
			return fmt.Errorf("transaction %d: %w", i, err)
		}
	}
	if bulk {
		if err := bootBulk(ctx, w); err != nil {
			return fmt.Errorf("bulk transaction: %w", err)
		}
	}
	return e.waitStored()
}

// write runs bursts of w until the producer has stored at least events
// data events.
func (e *bootEnv) write(t *testing.T, w *writer, events int) {
	t.Helper()
	for e.events(t) < events {
		if err := e.bootBurst(context.Background(), w, 5, true); err != nil {
			t.Fatal(err)
		}
	}
}

// bootWriting runs bursts of burst transactions of w in the background,
// with a pause after each, until the returned stop is called; stop returns
// the writer's error. t.Cleanup stops it too.
func (e *bootEnv) bootWriting(t *testing.T, w *writer, burst int, pause time.Duration) (stop func() error) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		for {
			if err := e.bootBurst(ctx, w, burst, false); err != nil {
				if ctx.Err() != nil {
					err = nil // a transaction cut short by stop
				}
				done <- err
				return
			}
			select {
			case <-ctx.Done():
				done <- nil
				return
			case <-time.After(pause):
			}
		}
	}()
	var once sync.Once
	var err error
	stop = func() error {
		once.Do(func() { cancel(); err = <-done })
		return err
	}
	t.Cleanup(func() { stop() })
	return stop
}

// bootChanges is how many changes TestBootstrapAfter100kChanges writes:
// 100k, as the bootstrap's acceptance test asks, even under the race
// detector (which makes the pure-Go SQLite about ten times slower: some 80
// s on two cores). DATABUS_BOOT_CHANGES overrides it for quick runs.
func bootChanges() int {
	if n, err := strconv.Atoi(os.Getenv("DATABUS_BOOT_CHANGES")); err == nil && n > 0 {
		return n
	}
	return 100_000
}

// bootCopy is a consumer that materialises the stream, snapshot pages
// included, into a materializer, and records what the client told it about
// the bootstrap.
type bootCopy struct {
	*materializer
	// onPage, if set, is called with each snapshot page before it is
	// applied.
	onPage func(w *client.Window)

	mu      sync.Mutex
	starts  []client.BootstrapInfo
	ends    []client.BootstrapInfo
	pages   int      // snapshot pages
	rows    int      // snapshot rows
	catchup []uint64 // windows delivered between an OnBootstrapStart and its OnBootstrapEnd
	inBoot  bool
}

func newBootCopy(t *testing.T) *bootCopy { return &bootCopy{materializer: newMaterializer(t)} }

func (b *bootCopy) OnBootstrapStart(_ context.Context, bi client.BootstrapInfo) error {
	b.mu.Lock()
	b.starts = append(b.starts, bi)
	b.inBoot = true
	b.mu.Unlock()
	if bi.Snapshot && !bi.Resumed {
		// The snapshot delivers no delete for rows gone since this copy was
		// made: start from nothing.
		m := b.materializer
		m.mu.Lock()
		m.tables = map[string]tableState{"main.acct": {}, "main.tag": {}}
		m.scns = nil
		m.txnWins = map[int64][]uint64{}
		m.mu.Unlock()
	}
	return nil
}

func (b *bootCopy) OnBootstrapEnd(_ context.Context, bi client.BootstrapInfo) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.ends = append(b.ends, bi)
	b.inBoot = false
	return nil
}

func (b *bootCopy) OnWindow(ctx context.Context, w *client.Window) error {
	if !w.Snapshot {
		if err := b.materializer.OnWindow(ctx, w); err != nil {
			return err
		}
		b.mu.Lock()
		if b.inBoot {
			b.catchup = append(b.catchup, w.SCN)
		}
		b.mu.Unlock()
		return nil
	}
	if b.onPage != nil {
		b.onPage(w)
	}
	m := b.materializer
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, e := range w.Events {
		if e.Op != event.OpInsert || e.SCN > w.SCN {
			m.t.Errorf("snapshot page at scn %d holds a %v of scn %d", w.SCN, e.Op, e.SCN)
		}
		kv, err := e.KeyValues()
		if err != nil {
			return err
		}
		row, err := e.Row()
		if err != nil {
			return err
		}
		m.tables[e.Source][fmt.Sprint(kv...)] = row
	}
	b.mu.Lock()
	b.pages++
	b.rows += len(w.Events)
	b.mu.Unlock()
	return nil
}

// bootRecord returns copies of what b recorded.
func (b *bootCopy) bootRecord() (starts, ends []client.BootstrapInfo, pages, rows int, catchup []uint64) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return append([]client.BootstrapInfo(nil), b.starts...), append([]client.BootstrapInfo(nil), b.ends...), b.pages, b.rows, append([]uint64(nil), b.catchup...)
}

// bootOnline waits until c has ended its bootstrap (h saw OnBootstrapEnd)
// and processed a window of the relay's stream after the bootstrap's
// target, and returns that target.
func bootOnline(t *testing.T, c *running, h *bootCopy, d time.Duration) uint64 {
	t.Helper()
	var target uint64
	waitFor(t, d, "the consumer to end its bootstrap and go on with the relay", func() bool {
		if err, stopped := c.wait(0); stopped {
			t.Fatalf("the consumer stopped: %v", err)
		}
		_, ends, _, _, _ := h.bootRecord()
		if len(ends) == 0 {
			return false
		}
		target = ends[len(ends)-1].TargetSCN
		cp := c.Checkpoint()
		return cp.Mode == checkpoint.Online && cp.SCN > target && c.Stats().Phase == client.PhaseOnline
	})
	return target
}

// TestBootstrapAfter100kChanges: 100k changes (see bootChanges) go through a relay whose buffer holds a small
// fraction of them, into the bootstrap store. A new consumer (full
// history) reads a snapshot and the log after it from the bootstrap
// server, then returns to the relay, while writes go on all the while; a
// consumer from the start of the stream, which the relay no longer holds,
// falls off and catches up on the log alone. Both copies must equal the
// tables once the writes stop.
func TestBootstrapAfter100kChanges(t *testing.T) {
	e := bootStart(t, 1<<20)
	w := newWriter(e.db, 71)
	start := time.Now()
	e.write(t, w, bootChanges())
	info := e.relay.Buffer().Info()
	st, err := e.store.State(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	src := dbState(t, e.db)
	// The writes have stopped and the store holds them all: its snapshot
	// at its head is the tables.
	nrows, err := e.store.CountRows(context.Background(), st.Head, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("source: %d acct rows, %d tag rows; the store's snapshot at its head %d: %d rows", len(src["main.acct"]), len(src["main.tag"]), st.Head, nrows)
	if int(nrows) != len(src["main.acct"])+len(src["main.tag"]) {
		t.Errorf("the store's snapshot holds %d rows, the tables %d", nrows, len(src["main.acct"])+len(src["main.tag"]))
	}
	t.Logf("%d events stored in %v: store head %d, %d windows, low watermark %d; relay holds windows %d..%d (low watermark %d, %d events)",
		e.events(t), time.Since(start).Round(time.Millisecond), st.Head, st.Windows, st.LowWatermark, info.MinSCN, info.MaxSCN, info.LowWatermark, info.Events)
	if info.LowWatermark == 0 || st.LowWatermark != 0 {
		t.Fatalf("relay low watermark %d, store low watermark %d: want the relay to have dropped the start of the history the store holds whole",
			info.LowWatermark, st.LowWatermark)
	}
	opts := []client.Option{client.WithBootstrap(e.url), client.WithLogger(warnLogger(t))}

	t.Run("snapshot", func(t *testing.T) {
		stop := e.bootWriting(t, w, 10, 2*time.Millisecond)
		h := newBootCopy(t)
		first := true
		h.onPage = func(p *client.Window) {
			if first {
				// Hold the snapshot until the writes have moved the store's
				// head well past it: the catch-up then has windows to
				// deliver.
				first = false
				deadline := time.Now().Add(20 * time.Second)
				for e.prod.Head() < p.SCN+300 && time.Now().Before(deadline) {
					time.Sleep(time.Millisecond)
				}
			}
		}
		c := runClient(t, []string{relayURL(e.relay)}, h, append(opts, client.WithStart(checkpoint.FullHistory()), client.WithMaxBytes(2<<10))...)
		phases := bootPhases(t, c)
		target := bootOnline(t, c, h, 60*time.Second)
		// Writes go on with the consumer back on the relay.
		at := c.Checkpoint().SCN
		waitFor(t, 20*time.Second, "online windows after the bootstrap", func() bool { return c.Checkpoint().SCN > at+100 })
		if err := stop(); err != nil {
			t.Fatal(err)
		}
		waitEqual(t, e.db, h.materializer, 30*time.Second)
		h.checkWhole(t)

		starts, ends, pages, rows, catchup := h.bootRecord()
		seen := phases()
		if len(starts) == 0 || !starts[0].Snapshot || starts[0].Resumed || starts[0].StartSCN < st.Head {
			t.Fatalf("OnBootstrapStart calls %+v: want a new snapshot at or after scn %d first", starts, st.Head)
		}
		t.Logf("snapshot of %d rows in %d pages at scn %d, catch-up of %d windows to scn %d; phases seen %v", rows, pages, starts[0].StartSCN, len(catchup), target, seen)
		if pages < 3 || rows == 0 {
			t.Errorf("%d snapshot pages of %d rows: want several", pages, rows)
		}
		if len(ends) == 0 || !ends[0].Snapshot || ends[0].Rows != uint64(rows) || ends[0].TargetSCN <= ends[0].StartSCN {
			t.Errorf("OnBootstrapEnd %+v: want the end of a snapshot of %d rows, with a target after its start", ends, rows)
		}
		if len(catchup) == 0 || catchup[0] <= starts[0].StartSCN || catchup[len(catchup)-1] > ends[0].TargetSCN {
			t.Errorf("catch-up windows %v: want windows after the snapshot's scn %d up to the target %d", catchup, starts[0].StartSCN, ends[0].TargetSCN)
		}
		if !seen[client.PhaseSnapshot] || !seen[client.PhaseOnline] {
			t.Errorf("phases seen in Stats: %v; want snapshot and online", seen)
		}
		if s := c.Stats(); s.Phase != client.PhaseOnline || c.Checkpoint().Mode != checkpoint.Online {
			t.Errorf("the consumer ended in phase %q at %s", s.Phase, c.Checkpoint())
		}
	})

	t.Run("log only", func(t *testing.T) {
		stop := e.bootWriting(t, w, 10, 2*time.Millisecond)
		h := newBootCopy(t)
		// Empty windows too: the log's heartbeats count among its windows.
		c := runClient(t, []string{relayURL(e.relay)}, h, append(opts, client.WithStart(checkpoint.Start()), client.WithEmptyWindows())...)
		target := bootOnline(t, c, h, 60*time.Second)
		if err := stop(); err != nil {
			t.Fatal(err)
		}
		waitEqual(t, e.db, h.materializer, 30*time.Second)
		h.checkWhole(t)

		starts, ends, pages, _, catchup := h.bootRecord()
		t.Logf("catch-up of %d windows from scn 0 to %d", len(catchup), target)
		if len(starts) == 0 || starts[0].Snapshot || starts[0].StartSCN != 0 {
			t.Errorf("first OnBootstrapStart %+v: want a catch-up from scn 0 without a snapshot", starts)
		}
		if pages != 0 || len(ends) == 0 || ends[0].Snapshot {
			t.Errorf("%d snapshot pages, OnBootstrapEnd %+v: want no snapshot", pages, ends)
		}
		if len(catchup) < int(st.Windows) {
			t.Errorf("%d windows caught up on: want at least the %d the log held before this consumer started", len(catchup), st.Windows)
		}
		if s := c.Stats(); s.Phase != client.PhaseOnline || c.Checkpoint().Mode != checkpoint.Online {
			t.Errorf("the consumer ended in phase %q at %s", s.Phase, c.Checkpoint())
		}
	})
}

// bootPhases samples c.Stats().Phase every millisecond until the returned
// function is called, which returns the phases seen.
func bootPhases(t *testing.T, c *running) func() map[string]bool {
	seen := map[string]bool{}
	done := make(chan struct{})
	stopped := make(chan struct{})
	go func() {
		defer close(stopped)
		for {
			seen[c.Stats().Phase] = true
			select {
			case <-done:
				return
			case <-time.After(time.Millisecond):
			}
		}
	}()
	var once sync.Once
	stop := func() map[string]bool {
		once.Do(func() { close(done); <-stopped })
		return seen
	}
	t.Cleanup(func() { stop() })
	return stop
}

// BenchmarkCatchup: a client catching up on the bootstrap log, served by
// the real server from a real SQLite store over loopback, beside the
// ceiling measured in the same run: plain GETs of the same /v1/catchup
// pages whose frames are only decoded by event.Decode, with no handler.
//
//	go test -run '^$' -bench Catchup -benchtime 1x ./e2e/
//
// The store holds DATABUS_BENCH_ROWS events (default 200000) of about 200
// bytes, 10 to a window, stored as the producer stores relay windows. The
// client starts from a catch-up checkpoint at the log's low watermark, the
// one it saves when it falls off the relays with a checkpoint the log
// holds, and is timed until OnBootstrapEnd; both use 1 MiB pages.
func BenchmarkCatchup(b *testing.B) {
	const perWindow = 10
	events := benchRows() / perWindow * perWindow
	st, id, head := bootBenchStore(b, events, perWindow)
	srv, err := server.New(server.Config{Listen: "127.0.0.1:0"}, st, nil, nil)
	if err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Run(ctx) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			b.Error(err)
		}
	}()
	<-srv.Ready()
	base := "http://" + srv.Addr()
	start := checkpoint.Checkpoint{V: checkpoint.Version, Mode: checkpoint.BootstrapCatchup,
		Bootstrap: &checkpoint.Bootstrap{TargetSCN: head, Store: id}}

	var clientTime, ceilingTime time.Duration
	var bytesRead int64
	b.ReportAllocs()
	for b.Loop() {
		t0 := time.Now()
		n, nb := bootRawCatchup(b, base, start)
		ceilingTime += time.Since(t0)
		bytesRead += nb
		if n != events {
			b.Fatalf("the raw pages held %d events, want %d", n, events)
		}

		t0 = time.Now()
		if n := bootClientCatchup(b, base, start); n != events {
			b.Fatalf("the client delivered %d events, want %d", n, events)
		}
		clientTime += time.Since(t0)
	}
	iters := float64(b.N)
	b.ReportMetric(float64(events)*iters/clientTime.Seconds(), "events/s")
	b.ReportMetric(float64(events)*iters/ceilingTime.Seconds(), "ceiling-events/s")
	b.ReportMetric(float64(bytesRead)/ceilingTime.Seconds()/1e6, "ceiling-MB/s")
	b.Logf("%d events in %d windows: client %.0f events/s, ceiling (GET + event.Decode) %.0f events/s",
		events, events/perWindow, float64(events)*iters/clientTime.Seconds(), float64(events)*iters/ceilingTime.Seconds())
}

// bootBenchStore fills a SQLite store in b.TempDir() with events insert
// events of about 200 bytes over distinct integer keys, perWindow to a
// window, with SCNs 1, 2, ... for the windows, as the producer stores relay
// windows (frames verbatim, each insert's frame reused as its snapshot
// row). It returns the store, its id and its head.
func bootBenchStore(b *testing.B, events, perWindow int) (*sqlitestore.Store, string, uint64) {
	b.Helper()
	st, err := sqlitestore.Open(filepath.Join(b.TempDir(), "bootstrap.db"), sqlitestore.Options{Sync: sqlitestore.SyncNormal})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { st.Close() })
	tbl := schema.Table{ID: 1, Name: "bench.item", Version: 1, Key: []string{"id"}, Columns: []schema.Column{
		{Name: "id", Avro: schema.Primitive("long")}, {Name: "v", Avro: schema.Primitive("string")}}}
	codec, err := schema.NewCodec(tbl.AvroSchema())
	if err != nil {
		b.Fatal(err)
	}
	ctx := context.Background()
	if err := st.Apply(ctx, &store.Batch{After: 0, Schemas: []schema.Table{tbl}}); err != nil {
		b.Fatal(err)
	}
	const frameSize = 200
	pad := strings.Repeat("x", frameSize-event.HeaderSize-event.TrailerSize-9-2-5) // key 9, length 2, id ~5
	var head uint64
	for k := 0; k < events; {
		batch := &store.Batch{After: head}
		for range 500 {
			if k >= events {
				break
			}
			scn := head + 1
			ts := time.Now().UnixNano()
			var frames []byte
			var rows []store.Row
			n := 0
			for ; n < perWindow && k < events; n, k = n+1, k+1 {
				key := event.AppendKeyInt(nil, int64(k))
				payload, err := codec.Encode(map[string]any{"id": int64(k), "v": pad})
				if err != nil {
					b.Fatal(err)
				}
				at := len(frames)
				if frames, err = event.AppendFrame(frames, &event.Event{Kind: event.KindData, Op: event.OpInsert, SCN: scn, Timestamp: ts,
					Source: tbl.ID, SchemaVersion: tbl.Version, Key: key, Payload: payload}); err != nil {
					b.Fatal(err)
				}
				rows = append(rows, store.Row{Source: tbl.ID, Key: key, SCN: scn, Op: store.RowUpsert, Frame: frames[at:len(frames):len(frames)]})
			}
			eow := event.EndOfWindow(scn, ts, uint32(n), "")
			if frames, err = event.AppendFrame(frames, &eow); err != nil {
				b.Fatal(err)
			}
			batch.Windows = append(batch.Windows, store.Window{SCN: scn, Timestamp: ts, Frames: frames, Rows: rows})
			head = scn
		}
		if err := st.Apply(ctx, batch); err != nil {
			b.Fatal(err)
		}
	}
	s, err := st.State(ctx)
	if err != nil {
		b.Fatal(err)
	}
	return st, s.ID, s.Head
}

// bootRawCatchup pages through the catch-up from start with plain GETs and
// decodes every frame, and returns the data events and bytes read.
func bootRawCatchup(b *testing.B, base string, start checkpoint.Checkpoint) (events int, bytesRead int64) {
	tr := &http.Transport{MaxIdleConnsPerHost: 1}
	defer tr.CloseIdleConnections()
	hc := &http.Client{Transport: tr}
	var body bytes.Buffer
	cp := start
	bs := *start.Bootstrap
	cp.Bootstrap = &bs
	for cp.SCN < bs.TargetSCN {
		resp, err := hc.Get(base + "/v1/catchup?" + url.Values{"checkpoint": {cp.String()}, "maxBytes": {"1048576"}}.Encode())
		if err != nil {
			b.Fatal(err)
		}
		body.Reset()
		_, err = body.ReadFrom(resp.Body)
		resp.Body.Close()
		if err != nil || resp.StatusCode != http.StatusOK {
			b.Fatalf("GET /v1/catchup: %d %v %s", resp.StatusCode, err, body.Bytes())
		}
		bytesRead += int64(body.Len())
		for p := body.Bytes(); len(p) > 0; {
			e, n, err := event.Decode(p)
			if err != nil {
				b.Fatal(err)
			}
			if e.Kind == event.KindData {
				events++
			}
			p = p[n:]
		}
		last, err := strconv.ParseUint(resp.Header.Get("X-Databus-Last-Scn"), 10, 64)
		if err != nil || last <= cp.SCN {
			b.Fatalf("catch-up page after scn %d ends at %q", cp.SCN, resp.Header.Get("X-Databus-Last-Scn"))
		}
		cp.SCN = last
	}
	return events, bytesRead
}

// bootCounter counts the events a client delivers and stops the client at
// the end of its bootstrap.
type bootCounter struct {
	events int
	stop   context.CancelFunc
}

func (h *bootCounter) OnWindow(_ context.Context, w *client.Window) error {
	h.events += len(w.Events)
	return nil
}

func (h *bootCounter) OnRollback(context.Context, uint64, error) {}

func (h *bootCounter) OnBootstrapStart(context.Context, client.BootstrapInfo) error { return nil }

func (h *bootCounter) OnBootstrapEnd(context.Context, client.BootstrapInfo) error {
	h.stop()
	return nil
}

// bootClientCatchup runs a client from start until the end of its
// catch-up, and returns the events it delivered.
func bootClientCatchup(b *testing.B, base string, start checkpoint.Checkpoint) int {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	h := &bootCounter{stop: cancel}
	// The relay is never reached: the handler stops the client when its
	// catch-up ends, before it turns to the relays.
	c, err := client.New([]string{base}, h, client.WithStart(start), client.WithBootstrap(base))
	if err != nil {
		b.Fatal(err)
	}
	if err := c.Run(ctx); !errors.Is(err, context.Canceled) {
		b.Fatalf("client: %v", err)
	}
	return h.events
}
