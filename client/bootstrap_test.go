package client

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"math/rand/v2"
	"net/http/httptest"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/databus-go/databus/bootstrap/server"
	"github.com/databus-go/databus/bootstrap/store"
	"github.com/databus-go/databus/bootstrap/store/sqlitestore"
	"github.com/databus-go/databus/checkpoint"
	"github.com/databus-go/databus/event"
	"github.com/databus-go/databus/schema"
)

// These tests run the client against a real bootstrap server over a real
// SQLite store, and a fake relay whose buffer starts after the history the
// consumer needs. Each ends by comparing the consumer's copy with the
// state the whole history produces.

// history is a random sequence of windows over person ids 1..60 (inserts,
// updates and deletes), with the state after each window.
type history struct {
	ws     []fakeWindow
	sw     []store.Window // the same windows as the bootstrap producer stores them
	states []map[int64]string
}

func newHistory(t *testing.T, n int, seed uint64) *history {
	r := rand.New(rand.NewPCG(seed, 1))
	c := codecOf(t, personV1())
	h := &history{}
	state := map[int64]string{}
	for i := 1; i <= n; i++ {
		scn := uint64(10 * i)
		var evs []event.Event
		var rows []store.Row
		for j := r.IntN(4); j > 0; j-- {
			id := int64(1 + r.IntN(60))
			if _, ok := state[id]; ok && r.IntN(3) == 0 {
				delete(state, id)
				evs = append(evs, event.Event{Kind: event.KindData, Op: event.OpDelete, SCN: scn, Timestamp: int64(scn) * 1e6,
					Source: 1, SchemaVersion: 1, Key: event.AppendKeyInt(nil, id)})
				rows = append(rows, store.Row{Source: 1, Key: event.AppendKeyInt(nil, id), SCN: scn, Op: store.RowDelete})
				continue
			}
			name := fmt.Sprintf("p%d-v%d", id, scn)
			p, err := c.Encode(map[string]any{"id": id, "name": name})
			if err != nil {
				t.Fatal(err)
			}
			op := event.OpInsert
			if _, ok := state[id]; ok {
				op = event.OpUpdate
			}
			state[id] = name
			e := event.Event{Kind: event.KindData, Op: op, SCN: scn, Timestamp: int64(scn) * 1e6,
				Source: 1, SchemaVersion: 1, Key: event.AppendKeyInt(nil, id), Payload: p}
			evs = append(evs, e)
			ins := e
			ins.Op = event.OpInsert
			rows = append(rows, store.Row{Source: 1, Key: e.Key, SCN: scn, Op: store.RowUpsert, Frame: mustFrame(t, ins)})
		}
		w := window(t, scn, evs...)
		var frames []byte
		for _, f := range w.frames {
			frames = append(frames, f...)
		}
		h.ws = append(h.ws, w)
		h.sw = append(h.sw, store.Window{SCN: scn, Timestamp: int64(scn) * 1e6, Frames: frames, Rows: rows})
		h.states = append(h.states, maps.Clone(state))
	}
	return h
}

// stateAt returns the state after window scn (0: empty).
func (h *history) stateAt(scn uint64) map[int64]string {
	if scn == 0 {
		return map[int64]string{}
	}
	return h.states[scn/10-1]
}

// bootEnv is a bootstrap store and server.
type bootEnv struct {
	st   *sqlitestore.Store
	srv  *httptest.Server
	h    *history
	mu   sync.Mutex
	head int // windows of h applied
}

func newBootEnv(t *testing.T, h *history, after uint64, upTo int) *bootEnv {
	st, err := sqlitestore.Open(filepath.Join(t.TempDir(), "bootstrap.db"), sqlitestore.Options{})
	if err != nil {
		t.Fatal(err)
	}
	s, err := server.New(server.Config{}, st, slog.New(slog.DiscardHandler), nil)
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(s.Handler())
	t.Cleanup(func() { srv.Close(); st.Close() })
	e := &bootEnv{st: st, srv: srv, h: h, head: int(after / 10)}
	if err := st.Apply(context.Background(), &store.Batch{After: after, Schemas: []schema.Table{personV1()}}); err != nil {
		t.Fatal(err)
	}
	e.applyTo(t, upTo)
	return e
}

// applyTo applies the history's windows up to number n (1-based), as the
// producer would.
func (e *bootEnv) applyTo(t testing.TB, n int) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if n <= e.head {
		return
	}
	after := uint64(e.head * 10)
	if err := e.st.Apply(context.Background(), &store.Batch{After: after, Windows: e.h.sw[e.head:n]}); err != nil {
		t.Error(err)
		return
	}
	e.head = n
}

// materializer keeps a copy of the person table.
type materializer struct {
	mu      sync.Mutex
	rows    map[int64]string
	starts  []BootstrapInfo
	ends    []BootstrapInfo
	pages   int
	failAt  int          // fail snapshot page number failAt (0: never)
	onPage  func(n int)  // called at each snapshot page
	onEnd   func()       // called at OnBootstrapEnd
	inPhase map[bool]int // windows seen, by Snapshot flag
	lastSCN uint64       // last non-snapshot window
	errs    []string     // problems found
}

func newMaterializer(rows map[int64]string) *materializer {
	return &materializer{rows: maps.Clone(rows), inPhase: map[bool]int{}}
}

func (m *materializer) OnWindow(ctx context.Context, w *Window) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.inPhase[w.Snapshot]++
	if w.Snapshot {
		m.pages++
		if m.failAt > 0 && m.pages == m.failAt {
			return errors.New("page failure injected by the test")
		}
		if m.onPage != nil {
			m.onPage(m.pages)
		}
	} else {
		if w.SCN <= m.lastSCN {
			m.errs = append(m.errs, fmt.Sprintf("window %d after window %d", w.SCN, m.lastSCN))
		}
		m.lastSCN = w.SCN
	}
	for _, e := range w.Events {
		vs, err := e.KeyValues()
		if err != nil {
			return err
		}
		id := vs[0].(int64)
		if e.Op == event.OpDelete {
			delete(m.rows, id)
			continue
		}
		if w.Snapshot && e.Op != event.OpInsert {
			m.errs = append(m.errs, fmt.Sprintf("snapshot event of op %v", e.Op))
		}
		row, err := e.Row()
		if err != nil {
			return err
		}
		m.rows[id] = row["name"].(string)
	}
	return nil
}

func (m *materializer) OnRollback(context.Context, uint64, error) {}

func (m *materializer) OnBootstrapStart(_ context.Context, b BootstrapInfo) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.starts = append(m.starts, b)
	if b.Snapshot && !b.Resumed {
		m.rows = map[int64]string{}
	}
	return nil
}

func (m *materializer) OnBootstrapEnd(_ context.Context, b BootstrapInfo) error {
	m.mu.Lock()
	m.ends = append(m.ends, b)
	f := m.onEnd
	m.mu.Unlock()
	if f != nil {
		f()
	}
	return nil
}

func (m *materializer) equal(t *testing.T, want map[int64]string) {
	t.Helper()
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, e := range m.errs {
		t.Error(e)
	}
	if !maps.Equal(m.rows, want) {
		for id, v := range want {
			if m.rows[id] != v {
				t.Errorf("row %d: consumer has %q, source %q", id, m.rows[id], v)
			}
		}
		for id, v := range m.rows {
			if _, ok := want[id]; !ok {
				t.Errorf("row %d: consumer has %q, source has no such row", id, v)
			}
		}
		t.Fatalf("the consumer's copy (%d rows) differs from the source (%d rows)", len(m.rows), len(want))
	}
}

// relayFrom returns a fake relay holding the history's windows from number
// first (1-based) on, refusing older checkpoints.
func relayFrom(t *testing.T, h *history, first int) *fakeRelay {
	r := newFakeRelay(t, personV1())
	r.add(h.ws[first-1:]...)
	r.lowWatermark = uint64((first - 1) * 10)
	return r
}

func TestBootstrapFullHistory(t *testing.T) {
	h := newHistory(t, 80, 1)
	env := newBootEnv(t, h, 0, 40)
	relay := relayFrom(t, h, 45)
	m := newMaterializer(nil)
	// The producer keeps writing while the consumer reads the snapshot:
	// rows changed after the snapshot's SCN must come from the catch-up.
	m.onPage = func(n int) {
		if n == 2 {
			env.applyTo(t, 60)
		}
	}
	c := newClient(t, []string{relay.URL()}, m, WithBootstrap(env.srv.URL), WithStart(checkpoint.FullHistory()), WithMaxBytes(1024))
	if err := runUntil(t, c, atSCN(c, 800)); err != nil && !errors.Is(err, context.Canceled) {
		t.Fatal(err)
	}
	m.equal(t, h.stateAt(800))
	if len(m.starts) != 1 || !m.starts[0].Snapshot || m.starts[0].Resumed || m.starts[0].StartSCN != 400 {
		t.Errorf("OnBootstrapStart calls: %+v, want one new snapshot at scn 400", m.starts)
	}
	if len(m.ends) != 1 || m.ends[0].TargetSCN != 600 {
		t.Errorf("OnBootstrapEnd calls: %+v, want one with target 600", m.ends)
	}
	if m.pages < 3 {
		t.Errorf("%d snapshot pages; the test wants several", m.pages)
	}
	if cp := c.Checkpoint(); cp.Mode != checkpoint.Online || cp.SCN != 800 {
		t.Errorf("checkpoint %s, want online at 800", cp)
	}
	if st := c.Stats(); st.Phase != PhaseOnline {
		t.Errorf("phase %q after the bootstrap", st.Phase)
	}
}

func TestBootstrapCatchupOnlyWhenTheLogHoldsTheCheckpoint(t *testing.T) {
	h := newHistory(t, 60, 2)
	env := newBootEnv(t, h, 0, 50)
	relay := relayFrom(t, h, 45)
	// A consumer that processed window 20 and stopped; the relays moved on.
	m := newMaterializer(h.stateAt(200))
	cps := &recordingStore{}
	c := newClient(t, []string{relay.URL()}, m, WithBootstrap(env.srv.URL), WithStart(checkpoint.At(200)), WithCheckpointStore(cps))
	if err := runUntil(t, c, atSCN(c, 600)); err != nil && !errors.Is(err, context.Canceled) {
		t.Fatal(err)
	}
	m.equal(t, h.stateAt(600))
	// Every checkpoint saved inside the catch-up is a catch-up one: a
	// consumer stopped there must resume its bootstrap, not go online
	// before the target.
	for _, cp := range cps.all() {
		if cp.Mode == checkpoint.Online && cp.SCN > 200 && cp.SCN < 500 {
			t.Errorf("online checkpoint %s saved inside the catch-up to 500", cp)
		}
	}
	if len(m.starts) != 1 || m.starts[0].Snapshot || m.starts[0].StartSCN != 200 || m.starts[0].TargetSCN != 500 {
		t.Errorf("OnBootstrapStart calls: %+v, want one catch-up from 200 to 500", m.starts)
	}
	if m.inPhase[true] != 0 {
		t.Errorf("%d snapshot pages; a catch-up from the log needs none", m.inPhase[true])
	}
}

func TestBootstrapSnapshotWhenTheLogWasPurged(t *testing.T) {
	h := newHistory(t, 60, 3)
	// The store's log starts after window 10: a consumer at window 5 needs
	// a snapshot. Its stale rows must go.
	env := newBootEnv(t, h, 0, 0)
	if err := env.st.Apply(context.Background(), &store.Batch{After: 0, Windows: h.sw[:40]}); err != nil {
		t.Fatal(err)
	}
	env.head = 40
	if _, err := env.st.Purge(context.Background(), store.PurgePolicy{LogBefore: timeOfSCN(105)}); err != nil {
		t.Fatal(err)
	}
	env.applyTo(t, 50)
	relay := relayFrom(t, h, 45)
	stale := maps.Clone(h.stateAt(50))
	stale[1000] = "a row deleted long ago"
	m := newMaterializer(stale)
	c := newClient(t, []string{relay.URL()}, m, WithBootstrap(env.srv.URL), WithStart(checkpoint.At(50)))
	if err := runUntil(t, c, atSCN(c, 600)); err != nil && !errors.Is(err, context.Canceled) {
		t.Fatal(err)
	}
	m.equal(t, h.stateAt(600))
	if len(m.starts) != 1 || !m.starts[0].Snapshot {
		t.Errorf("OnBootstrapStart calls: %+v, want one snapshot", m.starts)
	}
}

func TestBootstrapResumesMidSnapshot(t *testing.T) {
	h := newHistory(t, 60, 4)
	env := newBootEnv(t, h, 0, 50)
	relay := relayFrom(t, h, 45)
	cps := new(MemoryStore)
	m := newMaterializer(nil)
	m.failAt = 2
	c := newClient(t, []string{relay.URL()}, m, WithBootstrap(env.srv.URL), WithStart(checkpoint.FullHistory()),
		WithMaxBytes(1024), WithCheckpointStore(cps), WithRetry(1, 0, 0))
	var he *HandlerError
	if err := runUntil(t, c, func() bool { return false }); !errors.As(err, &he) {
		t.Fatalf("Run = %v, want a *HandlerError", err)
	}
	cp, _, _ := cps.Load(context.Background())
	if cp.Mode != checkpoint.BootstrapSnapshot || cp.Bootstrap.After == "" || cp.Bootstrap.Rows == 0 {
		t.Fatalf("saved checkpoint %s, want one inside the snapshot", cp)
	}
	rowsBefore := cp.Bootstrap.Rows

	// A new process: the same store and the same copy.
	m.failAt = 0
	pagesBefore := m.pages
	c2 := newClient(t, []string{relay.URL()}, m, WithBootstrap(env.srv.URL), WithMaxBytes(1024), WithCheckpointStore(cps))
	if err := runUntil(t, c2, atSCN(c2, 600)); err != nil && !errors.Is(err, context.Canceled) {
		t.Fatal(err)
	}
	m.equal(t, h.stateAt(600))
	if len(m.starts) != 2 || !m.starts[1].Resumed || m.starts[1].Rows != rowsBefore {
		t.Errorf("OnBootstrapStart calls: %+v, want the second resumed at %d rows", m.starts, rowsBefore)
	}
	// Resuming re-reads only the failed page: no page before it again.
	total := uint64(len(h.stateAt(500)))
	if got := c2.Stats().Rows; got != total {
		t.Errorf("snapshot rows %d, want %d", got, total)
	}
	if m.pages-pagesBefore == 0 {
		t.Error("the resumed run read no page")
	}
}

func TestBootstrapCatchesUpAgainWhenTheRelayLostTheTarget(t *testing.T) {
	h := newHistory(t, 70, 5)
	env := newBootEnv(t, h, 0, 40)
	// The relays hold nothing before window 55: after the first catch-up
	// (target 400) the client falls off again and must catch up on the
	// log, which the producer has meanwhile extended.
	relay := relayFrom(t, h, 56)
	m := newMaterializer(nil)
	var once sync.Once
	m.onEnd = func() { once.Do(func() { env.applyTo(t, 60) }) }
	c := newClient(t, []string{relay.URL()}, m, WithBootstrap(env.srv.URL), WithStart(checkpoint.FullHistory()))
	if err := runUntil(t, c, atSCN(c, 700)); err != nil && !errors.Is(err, context.Canceled) {
		t.Fatal(err)
	}
	m.equal(t, h.stateAt(700))
	if len(m.starts) != 2 || !m.starts[0].Snapshot || m.starts[1].Snapshot || m.starts[1].StartSCN != 400 || m.starts[1].TargetSCN != 600 {
		t.Errorf("OnBootstrapStart calls: %+v, want a snapshot then a catch-up from 400 to 600", m.starts)
	}
}

func TestBootstrapForeignCheckpointStartsOver(t *testing.T) {
	h := newHistory(t, 60, 6)
	env := newBootEnv(t, h, 0, 50)
	relay := relayFrom(t, h, 45)
	cps := new(MemoryStore)
	foreign := checkpoint.Checkpoint{V: 1, Mode: checkpoint.BootstrapSnapshot,
		Bootstrap: &checkpoint.Bootstrap{StartSCN: 300, TargetSCN: 300, Store: "0123456789abcdef0123456789abcdef", Rows: 7}}
	if err := cps.Save(context.Background(), foreign); err != nil {
		t.Fatal(err)
	}
	m := newMaterializer(map[int64]string{999: "from another store"})
	c := newClient(t, []string{relay.URL()}, m, WithBootstrap(env.srv.URL), WithCheckpointStore(cps))
	if err := runUntil(t, c, atSCN(c, 600)); err != nil && !errors.Is(err, context.Canceled) {
		t.Fatal(err)
	}
	m.equal(t, h.stateAt(600))
}

// timeOfSCN is the commit time of the history's window scn.
func timeOfSCN(scn uint64) time.Time { return time.Unix(0, int64(scn)*1e6) }

func TestBootstrapCheckpointWithoutServer(t *testing.T) {
	if _, err := New([]string{"http://127.0.0.1:1"}, &materializer{}, WithStart(checkpoint.FullHistory())); !errors.Is(err, ErrNotOnline) {
		t.Fatalf("New with a bootstrap start and no server = %v, want ErrNotOnline", err)
	}
}

func TestBootstrapStaysOnTheLogWhileASeedRuns(t *testing.T) {
	h := newHistory(t, 60, 7)
	env := newBootEnv(t, h, 0, 40)
	relay := relayFrom(t, h, 1)
	// A seed copies row 5000 into the log only (window 405, between two
	// relay windows), and is still running.
	c1 := codecOf(t, personV1())
	p, err := c1.Encode(map[string]any{"id": int64(5000), "name": "seeded"})
	if err != nil {
		t.Fatal(err)
	}
	seeded := event.Event{Kind: event.KindData, Op: event.OpInsert, SCN: 405, Timestamp: 405e6, Source: 1, SchemaVersion: 1,
		Key: event.AppendKeyInt(nil, 5000), Payload: p}
	fw := window(t, 405, seeded)
	var frames []byte
	for _, f := range fw.frames {
		frames = append(frames, f...)
	}
	run := store.SeedProgress{Table: "demo.person", Run: "r1", Started: time.Now(), Updated: time.Now()}
	env.mu.Lock()
	err = env.st.Apply(context.Background(), &store.Batch{After: 400, Seeds: []store.SeedProgress{run},
		Windows: []store.Window{{SCN: 405, Timestamp: 405e6, Frames: frames,
			Rows: []store.Row{{Source: 1, Key: seeded.Key, SCN: 405, Op: store.RowUpsert, Frame: mustFrame(t, seeded)}}}}})
	env.mu.Unlock()
	if err != nil {
		t.Fatal(err)
	}

	m := newMaterializer(nil)
	c := newClient(t, []string{relay.URL()}, m, WithBootstrap(env.srv.URL), WithStart(checkpoint.FullHistory()))
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- c.Run(ctx) }()
	waitUntil := func(what string, cond func() bool) {
		t.Helper()
		for deadline := time.Now().Add(10 * time.Second); !cond(); time.Sleep(5 * time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatalf("timed out waiting for %s; stats %+v", what, c.Stats())
			}
		}
	}
	waitUntil("the catch-up to reach the seeded window", func() bool { return c.Checkpoint().SCN >= 405 })
	time.Sleep(100 * time.Millisecond)
	if st := c.Stats(); st.Phase != PhaseCatchup {
		t.Fatalf("phase %q while a seed runs, want %q: the relays do not have the seeded rows", st.Phase, PhaseCatchup)
	}
	// The producer goes on, then the seed ends.
	env.mu.Lock()
	err = env.st.Apply(context.Background(), &store.Batch{After: 405, Windows: h.sw[40:45]})
	env.head = 45
	env.mu.Unlock()
	if err != nil {
		t.Fatal(err)
	}
	run.Done = true
	if err := env.st.Apply(context.Background(), &store.Batch{After: 450, Seeds: []store.SeedProgress{run}}); err != nil {
		t.Fatal(err)
	}
	waitUntil("the client to go online and reach the relay's last window", func() bool {
		return c.Stats().Phase == PhaseOnline && c.Checkpoint().SCN >= 600
	})
	cancel()
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Fatal(err)
	}
	want := maps.Clone(h.stateAt(600))
	want[5000] = "seeded"
	m.equal(t, want)
	if len(m.ends) != 1 || m.ends[0].TargetSCN < 450 {
		t.Errorf("OnBootstrapEnd calls %+v, want one at target 450 or later: the head when the seed was done", m.ends)
	}
}

// recordingStore is a MemoryStore that keeps every checkpoint saved.
type recordingStore struct {
	MemoryStore
	mu    sync.Mutex
	saved []checkpoint.Checkpoint
}

func (s *recordingStore) Save(ctx context.Context, cp checkpoint.Checkpoint) error {
	s.mu.Lock()
	s.saved = append(s.saved, cp)
	s.mu.Unlock()
	return s.MemoryStore.Save(ctx, cp)
}

func (s *recordingStore) all() []checkpoint.Checkpoint {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]checkpoint.Checkpoint(nil), s.saved...)
}
