package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/databus-go/databus/checkpoint"
	"github.com/databus-go/databus/client"
)

// TestStreamEqualsSource: mixed multi-statement transactions over two
// tables, written while a client streams them over HTTP. The client's copy
// must equal the tables; windows arrive in SCN order, each transaction whole.
func TestStreamEqualsSource(t *testing.T) {
	path, db := newDB(t)
	r := startRelay(t, path, 64<<20)
	m := newMaterializer(t)
	runClient(t, []string{relayURL(r)}, m, client.WithStart(checkpoint.Start()))
	if err := newWriter(db, 1).run(context.Background(), 600); err != nil {
		t.Fatal(err)
	}
	waitEqual(t, db, m, 30*time.Second)
	m.checkWhole(t)
	if _, scns := m.snapshot(); len(scns) < 2 {
		t.Fatalf("only %d windows", len(scns))
	}
}

// relayProcess is `databus relay` run as a real subprocess.
type relayProcess struct {
	t    *testing.T
	cfg  string
	addr string
	log  string
	cmd  *exec.Cmd
}

func freeAddr(t testing.TB) string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

func newRelayProcess(t *testing.T, dbPath string) *relayProcess {
	dir := t.TempDir()
	p := &relayProcess{t: t, cfg: filepath.Join(dir, "relay.yaml"), addr: freeAddr(t), log: filepath.Join(dir, "relay.log")}
	cfg := fmt.Sprintf(`relay:
  listen: %s
  stateDir: %s
  releaseInterval: 50ms
source:
  sqlite:
    path: %s
    tables: [acct, tag]
    pollInterval: 2ms
`, p.addr, filepath.Join(dir, "state"), dbPath)
	if err := os.WriteFile(p.cfg, []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		p.kill()
		if t.Failed() {
			b, _ := os.ReadFile(p.log)
			t.Logf("relay log:\n%s", b)
		}
	})
	return p
}

func (p *relayProcess) start() {
	p.t.Helper()
	log, err := os.OpenFile(p.log, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
	if err != nil {
		p.t.Fatal(err)
	}
	defer log.Close()
	p.cmd = exec.Command(databusBin, "relay", "--config", p.cfg, "--log-level", "warn")
	p.cmd.Stdout, p.cmd.Stderr = log, log
	p.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := p.cmd.Start(); err != nil {
		p.t.Fatal(err)
	}
	deadline := time.Now().Add(20 * time.Second)
	for {
		resp, err := http.Get("http://" + p.addr + "/healthz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return
			}
		}
		if time.Now().After(deadline) {
			p.t.Fatalf("relay did not become healthy: %v", err)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// kill sends SIGKILL: no chance to persist or flush anything.
func (p *relayProcess) kill() {
	if p.cmd == nil || p.cmd.Process == nil {
		return
	}
	syscall.Kill(-p.cmd.Process.Pid, syscall.SIGKILL)
	p.cmd.Wait()
	p.cmd = nil
}

// TestRelayKill9 kills the relay process mid-stream while writes go on,
// restarts it, and checks that the client resumes without loss, that its
// copy equals the database, and that the restarted relay serves exactly the
// same windows (same SCNs) as before the crash: no gap, no repeat.
func TestRelayKill9(t *testing.T) {
	path, db := newDB(t)
	p := newRelayProcess(t, path)
	p.start()
	m := newMaterializer(t)
	store := client.NewFileStore(filepath.Join(t.TempDir(), "cp.json"))
	runClient(t, []string{"http://" + p.addr}, m, client.WithStart(checkpoint.Start()), client.WithCheckpointStore(store), client.WithEmptyWindows())

	w := newWriter(db, 2)
	ctx := context.Background()
	if err := w.run(ctx, 300); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 20*time.Second, "client to consume windows before the crash", func() bool {
		_, scns := m.snapshot()
		return len(scns) >= 20
	})
	var wg sync.WaitGroup
	wg.Add(1)
	var werr error
	go func() { defer wg.Done(); werr = w.run(ctx, 400) }() // writes go on across the crash
	time.Sleep(30 * time.Millisecond)
	p.kill()
	time.Sleep(150 * time.Millisecond)
	p.start()
	wg.Wait()
	if werr != nil {
		t.Fatal(werr)
	}
	waitEqual(t, db, m, 40*time.Second)
	m.checkWhole(t)

	// A second consumer from the start sees the very windows the first saw.
	_, first := m.snapshot()
	m2 := newMaterializer(t)
	runClient(t, []string{"http://" + p.addr}, m2, client.WithStart(checkpoint.Start()), client.WithEmptyWindows())
	waitEqual(t, db, m2, 40*time.Second)
	waitFor(t, 10*time.Second, "second client to reach the first's last window", func() bool {
		_, s := m2.snapshot()
		return len(s) > 0 && s[len(s)-1] >= first[len(first)-1]
	})
	_, second := m2.snapshot()
	i := sort.Search(len(second), func(i int) bool { return second[i] > first[len(first)-1] })
	if fmt.Sprint(second[:i]) != fmt.Sprint(first) {
		t.Errorf("the restarted relay's windows differ from those served before the crash:\nbefore+after: %v\nfrom start:   %v", first, second[:i])
	}
}

// TestHandlerFailureReplaysWindow: a handler that fails on a window sees it
// again, whole, after a rollback, and the persisted checkpoint never points
// inside or past it.
func TestHandlerFailureReplaysWindow(t *testing.T) {
	path, db := newDB(t)
	r := startRelay(t, path, 64<<20)
	if err := newWriter(db, 3).run(context.Background(), 300); err != nil {
		t.Fatal(err)
	}
	cpPath := filepath.Join(t.TempDir(), "cp.json")
	m := newMaterializer(t)
	var (
		mu       sync.Mutex
		seen     int
		failed   uint64
		failedEv [][]byte
		replayed bool
		before   uint64 // SCN of the window applied before the failed one
	)
	m.failures = func(w *client.Window) error {
		mu.Lock()
		defer mu.Unlock()
		if len(w.Events) < 2 {
			return nil
		}
		seen++
		payloads := func() (out [][]byte) {
			for _, e := range w.Events {
				out = append(out, append(append([]byte(nil), e.Key...), e.Payload...))
			}
			return out
		}
		switch {
		case failed == 0 && seen == 10:
			failed, failedEv = w.SCN, payloads()
			_, scns := m.snapshot()
			before = scns[len(scns)-1]
			return errors.New("injected failure")
		case w.SCN == failed:
			replayed = true
			if got := payloads(); fmt.Sprint(got) != fmt.Sprint(failedEv) {
				t.Errorf("window %d replayed with other events", w.SCN)
			}
		}
		return nil
	}
	rollback := m.OnRollback
	h := &rollbackCheck{materializer: m, check: func(scn uint64) {
		b, err := os.ReadFile(cpPath)
		if err != nil {
			t.Errorf("no checkpoint persisted before the rollback: %v", err)
			return
		}
		cp, err := checkpoint.Parse(b)
		if err != nil {
			t.Errorf("persisted checkpoint: %v", err)
			return
		}
		mu.Lock()
		defer mu.Unlock()
		// OnRollback names the position rolled back to: the last window
		// processed before the failed one, which is also what is persisted.
		if scn != before || cp.SCN != before || cp.SCN >= failed {
			t.Errorf("rollback to %d with persisted checkpoint %d; the failed window is %d, the one before it %d", scn, cp.SCN, failed, before)
		}
		rollback(context.Background(), scn, nil)
	}}
	runClient(t, []string{relayURL(r)}, h, client.WithStart(checkpoint.Start()), client.WithCheckpointStore(client.NewFileStore(cpPath)))
	waitEqual(t, db, m, 30*time.Second)
	mu.Lock()
	defer mu.Unlock()
	if failed == 0 || !replayed {
		t.Fatalf("failure injected at %d, replayed %v", failed, replayed)
	}
	_, scns := m.snapshot()
	count := 0
	for _, s := range scns {
		if s == failed {
			count++
		}
	}
	if count != 1 {
		t.Errorf("failed window applied %d times", count)
	}
}

type rollbackCheck struct {
	*materializer
	check func(scn uint64)
}

func (h *rollbackCheck) OnRollback(_ context.Context, scn uint64, _ error) { h.check(scn) }

// TestCheckpointOlderThanBuffer: a client whose checkpoint the relay no
// longer holds gets the typed error with the oldest SCN held.
func TestCheckpointOlderThanBuffer(t *testing.T) {
	path, db := newDB(t)
	r := startRelay(t, path, 64<<10)
	if err := newWriter(db, 4).run(context.Background(), 1500); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 20*time.Second, "the relay to evict windows", func() bool { return r.Buffer().Info().LowWatermark > 0 })
	c := runClient(t, []string{relayURL(r)}, newMaterializer(t), client.WithStart(checkpoint.Start()))
	err, done := c.wait(20 * time.Second)
	if !done {
		t.Fatal("client kept running from a checkpoint the relay does not hold")
	}
	var nh *client.SCNNotHeldError
	if !errors.As(err, &nh) {
		t.Fatalf("Run = %v, want *client.SCNNotHeldError", err)
	}
	info := r.Buffer().Info()
	if nh.Checkpoint != 0 || nh.OldestSCN == 0 || nh.OldestSCN > info.MinSCN || nh.LowWatermark == 0 || nh.LowWatermark >= nh.OldestSCN {
		t.Errorf("error %+v does not match the buffer %+v", nh, info)
	}
}

// recorder records the identity of every data event it is given.
type recorder struct {
	mu     sync.Mutex
	events []string
}

func (r *recorder) OnWindow(_ context.Context, w *client.Window) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, e := range w.Events {
		r.events = append(r.events, fmt.Sprintf("%d/%s/%s/%x/%x", e.SCN, e.Source, e.Op, e.Key, e.Payload))
	}
	return nil
}

func (r *recorder) OnRollback(context.Context, uint64, error) {}

// TestModPartitionsCoverEveryEventOnce: four clients with MOD partitions
// 0..3 of 4 together receive every data event exactly once.
func TestModPartitionsCoverEveryEventOnce(t *testing.T) {
	path, db := newDB(t)
	r := startRelay(t, path, 64<<20)
	if err := newWriter(db, 5).run(context.Background(), 400); err != nil {
		t.Fatal(err)
	}
	m := newMaterializer(t)
	all := &recorder{}
	full := runClient(t, []string{relayURL(r)}, &both{m, all}, client.WithStart(checkpoint.Start()))
	waitEqual(t, db, m, 30*time.Second)
	last := full.Checkpoint().SCN
	var parts []*recorder
	for i := 0; i < 4; i++ {
		rec := &recorder{}
		parts = append(parts, rec)
		c := runClient(t, []string{relayURL(r)}, rec, client.WithStart(checkpoint.Start()), client.WithPartition(fmt.Sprintf("mod:%d/4", i)))
		waitFor(t, 20*time.Second, "partition client to catch up", func() bool { return c.Checkpoint().SCN >= last })
	}
	var union []string
	for i, p := range parts {
		p.mu.Lock()
		if len(p.events) == 0 {
			t.Errorf("partition %d received nothing", i)
		}
		union = append(union, p.events...)
		p.mu.Unlock()
	}
	all.mu.Lock()
	want := append([]string(nil), all.events...)
	all.mu.Unlock()
	sort.Strings(union)
	sort.Strings(want)
	if len(union) != len(want) {
		t.Fatalf("partitions received %d events together, the unfiltered client %d", len(union), len(want))
	}
	for i := range want {
		if union[i] != want[i] {
			t.Fatalf("event %d: partitions %s, unfiltered %s", i, union[i], want[i])
		}
	}
}

type both struct {
	*materializer
	rec *recorder
}

func (b *both) OnWindow(ctx context.Context, w *client.Window) error {
	if err := b.materializer.OnWindow(ctx, w); err != nil {
		return err
	}
	return b.rec.OnWindow(ctx, w)
}

// TestBadRequests: bad parameters get 4xx with a JSON body naming the
// problem, against a relay over a real database.
func TestBadRequests(t *testing.T) {
	path, _ := newDB(t)
	r := startRelay(t, path, 64<<20)
	cp := url.QueryEscape(`{"v":1,"mode":"online","scn":0}`)
	cases := []struct {
		path   string
		status int
		code   string
	}{
		{"/v1/stream", 400, "bad_checkpoint"},
		{"/v1/stream?checkpoint=%7Bnope", 400, "bad_checkpoint"},
		{"/v1/stream?checkpoint=" + url.QueryEscape(`{"v":1,"mode":"online","scn":0,"x":1}`), 400, "bad_checkpoint"},
		{"/v1/stream?wait=0s&checkpoint=" + cp + "&sources=main.nope", 400, "unknown_source"},
		{"/v1/stream?wait=0s&checkpoint=" + cp + "&partition=mod:9/4", 400, "bad_partition"},
		{"/v1/stream?wait=0s&checkpoint=" + cp + "&partition=range:0-10&sources=main.tag", 400, "bad_partition"},
		{"/v1/stream?wait=0s&checkpoint=" + cp + "&maxBytes=lots", 400, "bad_parameter"},
		{"/v1/stream?wait=0s&checkpoint=" + cp + "&maxBytes=1", 400, "bad_parameter"},
		{"/v1/stream?wait=1h&checkpoint=" + cp, 400, "bad_parameter"},
		{"/v1/stream?wait=0s&checkpoint=" + cp + "&format=xml", 400, "bad_parameter"},
		{"/v1/schemas/main.nope", 404, "unknown_source"},
		{"/v1/nope", 404, "not_found"},
	}
	for _, c := range cases {
		resp, err := http.Get(relayURL(r) + c.path)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		var e struct {
			Error struct{ Code, Message string }
		}
		if resp.StatusCode != c.status || json.Unmarshal(body, &e) != nil || e.Error.Code != c.code || e.Error.Message == "" {
			t.Errorf("GET %s = %d %s; want %d with code %s", c.path, resp.StatusCode, bytes.TrimSpace(body), c.status, c.code)
		}
	}
}

func waitFor(t *testing.T, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
