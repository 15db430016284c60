package client

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"go.uber.org/goleak"

	"github.com/databus-go/databus/checkpoint"
	"github.com/databus-go/databus/event"
	"github.com/databus-go/databus/schema"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// seenWindow is what a handler saw of one window.
type seenWindow struct {
	SCN uint64
	IDs []int64
}

type rollbackCall struct {
	SCN   uint64
	Cause error
}

// recorder is a Handler that records what it is given, checks that every
// event decodes, and fails when told to.
type recorder struct {
	mu        sync.Mutex
	seen      []seenWindow // every delivery, failed ones included
	ok        []seenWindow // successful deliveries
	rollbacks []rollbackCall
	changes   []schema.Table
	rows      []map[string]any // Row() of every successfully delivered event
	problems  []string
	attempts  map[uint64]int
	// fail, when set, decides the outcome of a delivery (attempt is 1-based).
	fail func(ctx context.Context, w *Window, attempt int) error
}

func (r *recorder) OnWindow(ctx context.Context, w *Window) error {
	s := seenWindow{SCN: w.SCN}
	var rows []map[string]any
	for _, e := range w.Events {
		if e.SCN != w.SCN {
			r.problem("event scn %d in window %d", e.SCN, w.SCN)
		}
		kv, err := e.KeyValues()
		if err != nil || len(kv) != 1 {
			r.problem("key of event in %d: %v %v", w.SCN, kv, err)
			continue
		}
		id := kv[0].(int64)
		s.IDs = append(s.IDs, id)
		row, err := e.Row()
		if err != nil {
			r.problem("Row of %d/%d: %v", w.SCN, id, err)
			continue
		}
		if row["id"] != id {
			r.problem("row id %v, key %d", row["id"], id)
		}
		rows = append(rows, row)
	}
	r.mu.Lock()
	if r.attempts == nil {
		r.attempts = map[uint64]int{}
	}
	r.attempts[w.SCN]++
	attempt := r.attempts[w.SCN]
	r.seen = append(r.seen, s)
	fail := r.fail
	r.mu.Unlock()
	var err error
	if fail != nil {
		err = fail(ctx, w, attempt)
	}
	if err == nil {
		r.mu.Lock()
		r.ok = append(r.ok, s)
		r.rows = append(r.rows, rows...)
		r.mu.Unlock()
	}
	return err
}

func (r *recorder) OnRollback(_ context.Context, scn uint64, cause error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.rollbacks = append(r.rollbacks, rollbackCall{scn, cause})
}

func (r *recorder) problem(format string, args ...any) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.problems = append(r.problems, fmt.Sprintf(format, args...))
}

func (r *recorder) check(t *testing.T) {
	t.Helper()
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, p := range r.problems {
		t.Error(p)
	}
}

func (r *recorder) okWindows() []seenWindow {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]seenWindow(nil), r.ok...)
}

// schemaRecorder also hears about schema changes.
type schemaRecorder struct{ *recorder }

func (r schemaRecorder) OnSchemaChange(_ context.Context, t schema.Table) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.changes = append(r.changes, t)
	return nil
}

// fast are options that keep tests quick.
func fast(extra ...Option) []Option {
	return append([]Option{
		WithWait(20 * time.Millisecond),
		WithRetry(5, time.Millisecond, 5*time.Millisecond),
		WithRelayRetry(0, time.Millisecond, 5*time.Millisecond),
	}, extra...)
}

func newClient(t *testing.T, relays []string, h Handler, opts ...Option) *Client {
	t.Helper()
	c, err := New(relays, h, fast(opts...)...)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// runUntil runs c until cond holds (then cancels it) or Run returns by
// itself, and returns Run's error.
func runUntil(t *testing.T, c *Client, cond func() bool) error {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- c.Run(ctx) }()
	deadline := time.Now().Add(15 * time.Second)
	tick := time.NewTicker(2 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case err := <-done:
			return err
		case <-tick.C:
		}
		if cond() {
			cancel()
			return <-done
		}
		if time.Now().After(deadline) {
			cancel()
			err := <-done
			t.Fatalf("condition not reached in time; Run returned %v; stats %+v", err, c.Stats())
		}
	}
}

// dedup drops consecutive repeats of a window.
func dedup(ws []seenWindow) []seenWindow {
	var out []seenWindow
	for _, w := range ws {
		if len(out) == 0 || out[len(out)-1].SCN != w.SCN {
			out = append(out, w)
		}
	}
	return out
}

func atSCN(c *Client, scn uint64) func() bool {
	return func() bool { return c.Checkpoint().SCN >= scn }
}

func TestDeliversAllWindowsInOrderWhole(t *testing.T) {
	ws := stream(t, 60)
	relay := newFakeRelay(t, personV1())
	relay.add(ws[:30]...)
	rec := &recorder{}
	store := NewFileStore(filepath.Join(t.TempDir(), "cp.json"))
	c := newClient(t, []string{relay.URL()}, rec,
		WithCheckpointStore(store), WithMaxBytes(1024), WithBufferWindows(2), WithName("test-1"),
		WithSources("demo.person"), WithPartition("mod:0/1"))
	// Add the second half while the client long-polls.
	go func() {
		for relay.requests() == nil || len(relay.requests()) < 3 {
			time.Sleep(time.Millisecond)
		}
		relay.add(ws[30:]...)
	}()
	if err := runUntil(t, c, atSCN(c, ws[59].scn)); !errors.Is(err, context.Canceled) {
		t.Fatalf("Run = %v, want context.Canceled", err)
	}
	rec.check(t)
	if d := cmp.Diff(expected(t, ws), rec.okWindows()); d != "" {
		t.Errorf("delivered windows (-want +got):\n%s", d)
	}
	if len(rec.seen) != len(rec.ok) || len(rec.rollbacks) != 0 {
		t.Errorf("%d deliveries, %d successful, %d rollbacks", len(rec.seen), len(rec.ok), len(rec.rollbacks))
	}
	cp, found, err := store.Load(context.Background())
	if err != nil || !found || cp.SCN != ws[59].scn {
		t.Errorf("stored checkpoint = %v %v %v, want scn %d", cp, found, err, ws[59].scn)
	}
	st := c.Stats()
	if st.Windows != 60 || st.Events != 90 || st.Checkpoint != 600 || st.RelayMaxSCN != 600 || st.LagSCN != 0 || st.Bytes == 0 {
		t.Errorf("stats = %+v", st)
	}
	// The relay saw this client's parameters, and every request resumed
	// from a window boundary it had sent.
	p := relay.param(0)
	for k, want := range map[string]string{"sources": "demo.person", "partition": "mod:0/1", "client": "test-1", "maxBytes": "1024", "wait": "20ms", "format": "binary"} {
		if p.Get(k) != want {
			t.Errorf("parameter %s = %q, want %q", k, p.Get(k), want)
		}
	}
	// One keep-alive connection served every request.
	if n, reqs := relay.connCount(), len(relay.requests()); n != 1 || reqs < 10 {
		t.Errorf("%d connections for %d requests, want 1 keep-alive connection", n, reqs)
	}
	boundaries := map[uint64]bool{0: true}
	for _, w := range ws {
		boundaries[w.scn] = true
	}
	for _, scn := range relay.requests() {
		if !boundaries[scn] {
			t.Errorf("request from checkpoint %d, not a window boundary", scn)
		}
	}
}

func TestResumesFromStoredCheckpoint(t *testing.T) {
	ws := stream(t, 20)
	relay := newFakeRelay(t, personV1())
	relay.add(ws...)
	store := NewFileStore(filepath.Join(t.TempDir(), "cp.json"))
	if err := store.Save(context.Background(), checkpoint.At(ws[9].scn)); err != nil {
		t.Fatal(err)
	}
	rec := &recorder{}
	c := newClient(t, []string{relay.URL()}, rec, WithCheckpointStore(store), WithStart(checkpoint.At(5)))
	if err := runUntil(t, c, atSCN(c, ws[19].scn)); !errors.Is(err, context.Canceled) {
		t.Fatal(err)
	}
	if d := cmp.Diff(expected(t, ws[10:]), rec.okWindows()); d != "" {
		t.Errorf("delivered windows (-want +got):\n%s", d)
	}
	if got := relay.requests()[0]; got != ws[9].scn {
		t.Errorf("first request from checkpoint %d, want %d", got, ws[9].scn)
	}
}

func TestFailover(t *testing.T) {
	ws := stream(t, 40)
	// A dead address: a listener closed at once refuses connections.
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	dead := "http://" + l.Addr().String()
	l.Close()

	a, b := newFakeRelay(t, personV1()), newFakeRelay(t, personV1())
	a.add(ws...)
	b.add(ws...)
	// a serves two responses, then fails for good: the client must go on
	// with b from where a left off.
	a.inject(faultNone, faultNone)
	a.setAlways(fault503)

	rec := &recorder{}
	c := newClient(t, []string{dead, a.URL(), b.URL()}, rec, WithMaxBytes(1024))
	if err := runUntil(t, c, atSCN(c, ws[39].scn)); !errors.Is(err, context.Canceled) {
		t.Fatal(err)
	}
	rec.check(t)
	if d := cmp.Diff(expected(t, ws), rec.okWindows()); d != "" {
		t.Errorf("delivered windows (-want +got):\n%s", d)
	}
	ra, rb := a.requests(), b.requests()
	if len(ra) < 3 || len(rb) == 0 {
		t.Fatalf("requests: a %v, b %v", ra, rb)
	}
	// b was asked from where a's last good response ended.
	if rb[0] != ra[2] || rb[0] == 0 {
		t.Errorf("b's first checkpoint %d, a's failing one %d", rb[0], ra[2])
	}
	if st := c.Stats(); st.RelayFailures < 2 || st.Relay != b.URL() {
		t.Errorf("stats = %+v", st)
	}
}

// inspectingStore checks the checkpoint file on disk after every save.
type inspectingStore struct {
	*FileStore
	mu    sync.Mutex
	saved []uint64
}

func (s *inspectingStore) Save(ctx context.Context, cp checkpoint.Checkpoint) error {
	if err := s.FileStore.Save(ctx, cp); err != nil {
		return err
	}
	onDisk := s.onDisk()
	s.mu.Lock()
	defer s.mu.Unlock()
	s.saved = append(s.saved, onDisk)
	return nil
}

func (s *inspectingStore) onDisk() uint64 {
	b, err := os.ReadFile(s.Path())
	if err != nil {
		return 0
	}
	cp, err := checkpoint.Parse(b)
	if err != nil {
		panic(fmt.Sprintf("checkpoint file %q: %v", b, err))
	}
	return cp.SCN
}

func TestHandlerFailureRollsBackAndReplaysWindow(t *testing.T) {
	ws := stream(t, 12)
	failSCN := ws[6].scn // 70: three events
	relay := newFakeRelay(t, personV1())
	relay.add(ws...)
	store := &inspectingStore{FileStore: NewFileStore(filepath.Join(t.TempDir(), "cp.json"))}
	boom := errors.New("boom")
	var onDiskDuringFailure []uint64
	rec := &recorder{}
	rec.fail = func(_ context.Context, w *Window, attempt int) error {
		if w.SCN == failSCN && attempt <= 2 {
			onDiskDuringFailure = append(onDiskDuringFailure, store.onDisk())
			return boom
		}
		return nil
	}
	c := newClient(t, []string{relay.URL()}, rec, WithCheckpointStore(store))
	if err := runUntil(t, c, atSCN(c, ws[11].scn)); !errors.Is(err, context.Canceled) {
		t.Fatal(err)
	}
	rec.check(t)
	want := expected(t, ws)
	if d := cmp.Diff(want, rec.okWindows()); d != "" {
		t.Errorf("successful windows (-want +got):\n%s", d)
	}
	// Deliveries: the source sequence with the failing window three times,
	// whole each time.
	var wantSeen []seenWindow
	for _, s := range want {
		wantSeen = append(wantSeen, s)
		if s.SCN == failSCN {
			wantSeen = append(wantSeen, s, s)
		}
	}
	if d := cmp.Diff(wantSeen, rec.seen); d != "" {
		t.Errorf("deliveries (-want +got):\n%s", d)
	}
	wantRB := []rollbackCall{{ws[5].scn, boom}, {ws[5].scn, boom}}
	if d := cmp.Diff(wantRB, rec.rollbacks, cmp.Comparer(func(a, b error) bool { return errors.Is(a, b) })); d != "" {
		t.Errorf("rollbacks (-want +got):\n%s", d)
	}
	for _, scn := range onDiskDuringFailure {
		if scn >= failSCN {
			t.Errorf("checkpoint on disk %d while window %d was failing", scn, failSCN)
		}
	}
	// Every save landed on a window boundary, in order, one per window.
	var wantSaved []uint64
	for _, w := range ws {
		wantSaved = append(wantSaved, w.scn)
	}
	if d := cmp.Diff(wantSaved, store.saved); d != "" {
		t.Errorf("checkpoints on disk after each save (-want +got):\n%s", d)
	}
	if st := c.Stats(); st.Retries != 2 {
		t.Errorf("stats.Retries = %d", st.Retries)
	}
}

func TestRetryLimitGivesUp(t *testing.T) {
	ws := stream(t, 12)
	failSCN := ws[6].scn
	relay := newFakeRelay(t, personV1())
	relay.add(ws...)
	store := &inspectingStore{FileStore: NewFileStore(filepath.Join(t.TempDir(), "cp.json"))}
	boom := errors.New("boom")
	rec := &recorder{fail: func(_ context.Context, w *Window, _ int) error {
		if w.SCN == failSCN {
			return boom
		}
		return nil
	}}
	c := newClient(t, []string{relay.URL()}, rec, WithCheckpointStore(store), WithRetry(3, time.Millisecond, 2*time.Millisecond))
	err := runUntil(t, c, func() bool { return false })
	var he *HandlerError
	if !errors.As(err, &he) || he.SCN != failSCN || he.Attempts != 3 || !errors.Is(err, boom) {
		t.Fatalf("Run = %v, want *HandlerError at %d after 3 attempts wrapping boom", err, failSCN)
	}
	if got := c.Checkpoint().SCN; got != ws[5].scn {
		t.Errorf("Checkpoint = %d, want %d", got, ws[5].scn)
	}
	if got := store.onDisk(); got != ws[5].scn {
		t.Errorf("checkpoint on disk = %d, want %d", got, ws[5].scn)
	}
	if len(rec.rollbacks) != 3 || rec.attempts[failSCN] != 3 {
		t.Errorf("%d rollbacks, %d attempts", len(rec.rollbacks), rec.attempts[failSCN])
	}
	for _, s := range rec.seen {
		if s.SCN > failSCN {
			t.Errorf("window %d delivered after the failing one", s.SCN)
		}
	}
	// Running again replays the failed window first.
	rec.fail = nil
	rec.ok = nil
	if err := runUntil(t, c, atSCN(c, ws[11].scn)); !errors.Is(err, context.Canceled) {
		t.Fatal(err)
	}
	if d := cmp.Diff(expected(t, ws[6:]), rec.okWindows()); d != "" {
		t.Errorf("second run (-want +got):\n%s", d)
	}
}

func TestCallbackTimeout(t *testing.T) {
	ws := stream(t, 4)
	relay := newFakeRelay(t, personV1())
	relay.add(ws...)
	slowSCN := ws[1].scn
	rec := &recorder{fail: func(ctx context.Context, w *Window, attempt int) error {
		if w.SCN != slowSCN {
			return nil
		}
		switch attempt {
		case 1: // overruns, honouring ctx
			<-ctx.Done()
			return ctx.Err()
		case 2: // overruns, ignoring ctx, and claims success
			time.Sleep(60 * time.Millisecond)
			return nil
		}
		return nil
	}}
	c := newClient(t, []string{relay.URL()}, rec, WithCallbackTimeout(30*time.Millisecond))
	if err := runUntil(t, c, atSCN(c, ws[3].scn)); !errors.Is(err, context.Canceled) {
		t.Fatal(err)
	}
	if rec.attempts[slowSCN] != 3 || len(rec.rollbacks) != 2 {
		t.Fatalf("%d attempts, rollbacks %v", rec.attempts[slowSCN], rec.rollbacks)
	}
	for _, rb := range rec.rollbacks {
		if !errors.Is(rb.Cause, ErrCallbackTimeout) || rb.SCN != ws[0].scn {
			t.Errorf("rollback %+v, want to %d for ErrCallbackTimeout", rb, ws[0].scn)
		}
	}
	// The second attempt returned nil too late: the client did not count it.
	if d := cmp.Diff(expected(t, ws), dedup(rec.okWindows())); d != "" {
		t.Errorf("delivered (-want +got):\n%s", d)
	}
	if st := c.Stats(); st.Windows != 4 || st.Retries != 2 {
		t.Errorf("stats = %+v", st)
	}

	// A handler that always overruns exhausts the retries.
	rec2 := &recorder{fail: func(ctx context.Context, w *Window, _ int) error {
		<-ctx.Done()
		return nil
	}}
	c2 := newClient(t, []string{relay.URL()}, rec2, WithCallbackTimeout(10*time.Millisecond), WithRetry(2, time.Millisecond, time.Millisecond))
	err := runUntil(t, c2, func() bool { return false })
	var he *HandlerError
	if !errors.As(err, &he) || !errors.Is(err, ErrCallbackTimeout) || he.SCN != ws[0].scn {
		t.Fatalf("Run = %v, want *HandlerError wrapping ErrCallbackTimeout", err)
	}
}

func TestSCNNotHeld(t *testing.T) {
	ws := stream(t, 10)
	a, b := newFakeRelay(t, personV1()), newFakeRelay(t, personV1())
	for _, r := range []*fakeRelay{a, b} {
		r.add(ws[5:]...)
		r.lowWatermark = ws[4].scn
	}
	rec := &recorder{}
	c := newClient(t, []string{a.URL(), b.URL()}, rec, WithStart(checkpoint.At(ws[1].scn)))
	err := runUntil(t, c, func() bool { return false })
	var nh *SCNNotHeldError
	if !errors.As(err, &nh) {
		t.Fatalf("Run = %v, want *SCNNotHeldError", err)
	}
	want := &SCNNotHeldError{Relay: b.URL(), Checkpoint: ws[1].scn, OldestSCN: ws[5].scn, LowWatermark: ws[4].scn}
	if d := cmp.Diff(want, nh); d != "" {
		t.Errorf("error (-want +got):\n%s", d)
	}
	// Each relay was asked once: the second might have held more.
	if len(a.requests()) != 1 || len(b.requests()) != 1 || len(rec.seen) != 0 {
		t.Errorf("requests a %v b %v, deliveries %v", a.requests(), b.requests(), rec.seen)
	}

	// If one relay still holds the windows, the client carries on there.
	b.mu.Lock()
	b.lowWatermark = 0
	b.windows = nil
	b.mu.Unlock()
	b.add(ws...)
	c2 := newClient(t, []string{a.URL(), b.URL()}, rec, WithStart(checkpoint.At(ws[1].scn)))
	if err := runUntil(t, c2, atSCN(c2, ws[9].scn)); !errors.Is(err, context.Canceled) {
		t.Fatal(err)
	}
	if d := cmp.Diff(expected(t, ws[2:]), rec.okWindows()); d != "" {
		t.Errorf("delivered (-want +got):\n%s", d)
	}
}

func TestRelayErrorNotRetried(t *testing.T) {
	a, b := newFakeRelay(t, personV1()), newFakeRelay(t, personV1())
	a.add(stream(t, 3)...)
	b.add(stream(t, 3)...)
	a.inject(fault400)
	c := newClient(t, []string{a.URL(), b.URL()}, &recorder{}, WithPartition("range:0-10"))
	err := runUntil(t, c, func() bool { return false })
	var re *RelayError
	if !errors.As(err, &re) {
		t.Fatalf("Run = %v, want *RelayError", err)
	}
	want := &RelayError{Relay: a.URL(), Status: 400, Code: "bad_partition", Parameter: "partition", Message: "range over a string key"}
	if d := cmp.Diff(want, re); d != "" {
		t.Errorf("error (-want +got):\n%s", d)
	}
	if len(a.requests()) != 1 || len(b.requests()) != 0 {
		t.Errorf("requests: a %v, b %v", a.requests(), b.requests())
	}
	if !strings.Contains(err.Error(), "bad_partition") {
		t.Errorf("message %q does not name the code", err)
	}
}

func TestBadResponsesRetriedNotDelivered(t *testing.T) {
	for _, tc := range []struct {
		name  string
		fault fault
	}{
		{"corrupt frame", faultCorrupt},
		{"ends inside a window", faultTruncWindow},
		{"ends inside a frame", faultTruncFrame},
		{"connection cut", faultAbort},
		{"500", fault500},
		{"not frames", faultHTML},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ws := stream(t, 12)
			relay := newFakeRelay(t, personV1())
			relay.add(ws...)
			relay.inject(faultNone, tc.fault, tc.fault)
			rec := &recorder{}
			c := newClient(t, []string{relay.URL()}, rec, WithMaxBytes(1024))
			if err := runUntil(t, c, atSCN(c, ws[11].scn)); !errors.Is(err, context.Canceled) {
				t.Fatal(err)
			}
			rec.check(t)
			// Every window exactly once, intact (the recorder decodes every row).
			if d := cmp.Diff(expected(t, ws), rec.okWindows()); d != "" {
				t.Errorf("delivered (-want +got):\n%s", d)
			}
			if len(rec.seen) != len(rec.ok) {
				t.Errorf("%d deliveries for %d windows", len(rec.seen), len(rec.ok))
			}
			if st := c.Stats(); st.RelayFailures != 2 {
				t.Errorf("RelayFailures = %d, want 2", st.RelayFailures)
			}
		})
	}
}

func TestUnavailableAfterRelayRetries(t *testing.T) {
	relay := newFakeRelay(t, personV1())
	relay.setAlways(fault500)
	c := newClient(t, []string{relay.URL()}, &recorder{}, WithRelayRetry(3, time.Millisecond, time.Millisecond))
	err := runUntil(t, c, func() bool { return false })
	var ue *UnavailableError
	if !errors.As(err, &ue) || ue.Attempts != 3 {
		t.Fatalf("Run = %v, want *UnavailableError after 3 attempts", err)
	}
}

func TestSchemaChange(t *testing.T) {
	v1, v2 := personV1(), personV2()
	c1, c2 := codecOf(t, v1), codecOf(t, v2)
	change, err := event.NewSchemaChange(30, 30e6, event.SchemaChange{Source: 1, Name: v2.Name, Version: 2, Key: v2.Key, Avro: v2.AvroSchema()})
	if err != nil {
		t.Fatal(err)
	}
	v2Event := func(scn uint64, id int64) event.Event {
		p, err := c2.Encode(map[string]any{"id": id, "name": nil, "e_mail": fmt.Sprintf("%d@example.com", id)})
		if err != nil {
			t.Fatal(err)
		}
		return event.Event{Kind: event.KindData, Op: event.OpInsert, SCN: scn, Source: 1, SchemaVersion: 2, Key: event.AppendKeyInt(nil, id), Payload: p}
	}
	ws := []fakeWindow{
		window(t, 10, personEvent(t, c1, 10, 1)),
		window(t, 20, personEvent(t, c1, 20, 2)),
		// The DDL's window: an old-version event, the change, new-version events.
		window(t, 30, personEvent(t, c1, 30, 3), change, v2Event(30, 4)),
		window(t, 40, v2Event(40, 5)),
	}
	wantRows := []map[string]any{
		{"id": int64(1), "name": "person-1"},
		{"id": int64(2), "name": "person-2"},
		{"id": int64(3), "name": "person-3"},
		{"id": int64(4), "name": nil, "e_mail": "4@example.com"},
		{"id": int64(5), "name": nil, "e_mail": "5@example.com"},
	}

	for _, tc := range []struct {
		name string
		// listed is what the relay's /v1/schemas lists once the client
		// has made its first fetch.
		listed   []schema.Table
		wantCols []string
	}{
		// The relay lists the new version: the client takes its definition.
		{"relay lists it", []schema.Table{v1, v2}, []string{"id", "name", "e mail"}},
		// The relay does not: the client rebuilds it from the frame's Avro
		// schema (column names are then Avro field names).
		{"frame only", []schema.Table{v1}, []string{"id", "name", "e_mail"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			relay := newFakeRelay(t, v1)
			relay.add(ws[:2]...)
			rec := &recorder{}
			c := newClient(t, []string{relay.URL()}, schemaRecorder{rec})
			added := false
			err := runUntil(t, c, func() bool {
				// Once the client has fetched the schemas and caught up,
				// the relay sees the DDL.
				if !added && c.Checkpoint().SCN >= 20 {
					relay.setSchemas(tc.listed...)
					relay.add(ws[2:]...)
					added = true
				}
				return c.Checkpoint().SCN >= 40
			})
			if !errors.Is(err, context.Canceled) {
				t.Fatal(err)
			}
			rec.check(t)
			if d := cmp.Diff(wantRows, rec.rows); d != "" {
				t.Errorf("rows (-want +got):\n%s", d)
			}
			if len(rec.changes) != 1 {
				t.Fatalf("schema changes: %+v", rec.changes)
			}
			var cols []string
			for _, col := range rec.changes[0].Columns {
				cols = append(cols, col.Name)
			}
			if ch := rec.changes[0]; ch.Version != 2 || !cmp.Equal(cols, tc.wantCols) {
				t.Errorf("OnSchemaChange got version %d columns %q, want 2 %q", ch.Version, cols, tc.wantCols)
			}
			if e, ok := c.reg.Get(1, 2); !ok || len(e.Columns) != 3 {
				t.Errorf("registry has no version 2")
			}
			if relay.schemaCallCount() != 2 {
				t.Errorf("/v1/schemas fetched %d times, want 2 (start, unknown version)", relay.schemaCalls)
			}
		})
	}

	// A data event whose version no one announces is a protocol error:
	// retried, never delivered undecodable.
	relay := newFakeRelay(t, v1)
	relay.add(window(t, 10, v2Event(10, 1)))
	rec := &recorder{}
	c := newClient(t, []string{relay.URL()}, rec, WithRelayRetry(2, time.Millisecond, time.Millisecond))
	err = runUntil(t, c, func() bool { return false })
	if !errors.Is(err, ErrProtocol) || len(rec.seen) != 0 {
		t.Errorf("Run = %v after %d deliveries, want a protocol error", err, len(rec.seen))
	}
}

func TestEventHandler(t *testing.T) {
	ws := stream(t, 8)
	relay := newFakeRelay(t, personV1())
	relay.add(ws...)
	failSCN := ws[2].scn // three events
	var (
		mu    sync.Mutex
		seen  []int64
		fails int
	)
	h := EventHandler(func(_ context.Context, e *Event) error {
		id, _ := event.KeyInt(e.Key)
		mu.Lock()
		defer mu.Unlock()
		seen = append(seen, id)
		if e.SCN == failSCN && id == 3002 && fails == 0 {
			fails++
			return errors.New("third event fails once")
		}
		return nil
	})
	c := newClient(t, []string{relay.URL()}, h)
	if err := runUntil(t, c, atSCN(c, ws[7].scn)); !errors.Is(err, context.Canceled) {
		t.Fatal(err)
	}
	want := []int64{1000, 2000, 2001, 3000, 3001, 3002, 3000, 3001, 3002, 5000, 6000, 6001, 7000, 7001, 7002}
	if d := cmp.Diff(want, seen); d != "" {
		t.Errorf("events seen (-want +got):\n%s", d)
	}
}

func TestEmptyWindowsAndCheckpointEvery(t *testing.T) {
	ws := stream(t, 10)
	relay := newFakeRelay(t, personV1())
	relay.add(ws...)
	store := &inspectingStore{FileStore: NewFileStore(filepath.Join(t.TempDir(), "cp.json"))}
	rec := &recorder{}
	c := newClient(t, []string{relay.URL()}, rec, WithEmptyWindows(), WithCheckpointEvery(4), WithCheckpointStore(store))
	if err := runUntil(t, c, atSCN(c, ws[9].scn)); !errors.Is(err, context.Canceled) {
		t.Fatal(err)
	}
	if len(rec.ok) != 10 {
		t.Errorf("%d windows delivered, want all 10 with WithEmptyWindows", len(rec.ok))
	}
	// Saves after windows 4 and 8, and the rest on the way out.
	if d := cmp.Diff([]uint64{40, 80, 100}, store.saved); d != "" {
		t.Errorf("saves (-want +got):\n%s", d)
	}
}

func TestRunTwiceAtOnce(t *testing.T) {
	relay := newFakeRelay(t, personV1())
	c := newClient(t, []string{relay.URL()}, &recorder{})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error)
	go func() { done <- c.Run(ctx) }()
	for len(relay.requests()) == 0 {
		time.Sleep(time.Millisecond)
	}
	if err := c.Run(ctx); !errors.Is(err, ErrRunning) {
		t.Errorf("second Run = %v", err)
	}
	cancel()
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Errorf("Run = %v", err)
	}
}

func TestNewValidates(t *testing.T) {
	h := &recorder{}
	for _, tc := range []struct {
		relays []string
		h      Handler
		opt    Option
		want   string
	}{
		{nil, h, nil, "no relay"},
		{[]string{"relay:8080"}, h, nil, "relay URL"},
		{[]string{"http://r"}, nil, nil, "nil Handler"},
		{[]string{"http://r"}, h, WithMaxBytes(10), "WithMaxBytes"},
		{[]string{"http://r"}, h, WithWait(time.Hour), "WithWait"},
		{[]string{"http://r"}, h, WithPartition("mod:9/8"), "WithPartition"},
		{[]string{"http://r"}, h, WithRetry(0, 0, 0), "WithRetry"},
		{[]string{"http://r"}, h, WithRetry(1, time.Second, time.Millisecond), "WithRetry"},
		{[]string{"http://r"}, h, WithName("has space"), "WithName"},
		{[]string{"http://r"}, h, WithStart(checkpoint.Checkpoint{}), "WithStart"},
		{[]string{"http://r"}, h, WithCheckpointEvery(0), "WithCheckpointEvery"},
		{[]string{"http://r"}, h, WithSources("a,b"), "WithSources"},
	} {
		var opts []Option
		if tc.opt != nil {
			opts = append(opts, tc.opt)
		}
		_, err := New(tc.relays, tc.h, opts...)
		if err == nil || !strings.Contains(err.Error(), tc.want) || !strings.HasPrefix(err.Error(), "databus: ") {
			t.Errorf("New(%v, %T, %s) = %v, want an error about %s", tc.relays, tc.h, tc.want, err, tc.want)
		}
	}
}

func TestRowAccessors(t *testing.T) {
	v1 := personV1()
	reg := schema.NewRegistry()
	entry, err := reg.Put(v1)
	if err != nil {
		t.Fatal(err)
	}
	c := codecOf(t, v1)
	before, _ := c.Encode(map[string]any{"id": int64(7), "name": "old"})
	del := &Event{Op: event.OpDelete, Key: event.AppendKeyInt(nil, 7), Before: before, HasBefore: true, entry: entry}
	if _, err := del.Row(); !errors.Is(err, ErrNoImage) {
		t.Errorf("Row of a delete = %v", err)
	}
	if err := del.Decode(&struct{}{}); !errors.Is(err, ErrNoImage) {
		t.Errorf("Decode of a delete = %v", err)
	}
	row, err := del.BeforeRow()
	if err != nil || row["name"] != "old" {
		t.Errorf("BeforeRow = %v, %v", row, err)
	}
	var s struct {
		ID   int64   `avro:"id"`
		Name *string `avro:"name"`
	}
	if err := del.DecodeBefore(&s); err != nil || s.ID != 7 || *s.Name != "old" {
		t.Errorf("DecodeBefore = %+v, %v", s, err)
	}
	ins := &Event{Op: event.OpInsert, Payload: before, entry: entry}
	if _, err := ins.BeforeRow(); !errors.Is(err, ErrNoImage) {
		t.Errorf("BeforeRow without image = %v", err)
	}
	if err := ins.Decode(&s); err != nil || s.ID != 7 {
		t.Errorf("Decode = %+v, %v", s, err)
	}
	if kv, err := del.KeyValues(); err != nil || !cmp.Equal(kv, []any{int64(7)}) {
		t.Errorf("KeyValues = %v, %v", kv, err)
	}
	if del.Table().Name != "demo.person" {
		t.Errorf("Table = %+v", del.Table())
	}
}
