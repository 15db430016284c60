package e2e

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"

	"github.com/databus-go/databus/checkpoint"
	"github.com/databus-go/databus/client"
	"github.com/databus-go/databus/event"
	"github.com/databus-go/databus/schema"
)

// A consumer killed with SIGKILL during its bootstrap resumes where its
// checkpoint file says, and ends with a copy equal to the source tables.
// The consumer is this test binary run again in a helper mode (see
// bootChildEnv): a client that materialises the stream into a SQLite file
// of its own, one transaction per window, with a client.FileStore
// checkpoint.

// bootChildEnv, when set, makes the test binary run as the consumer of
// TestBootstrapClientKill9 instead of running tests. Its value is the
// bootChildConfig as JSON.
const bootChildEnv = "DATABUS_E2E_BOOT_CHILD"

// bootChildConfig is what the parent tells a consumer process.
type bootChildConfig struct {
	Run        int    // the run's number, 1 and up, for its log lines
	Relay      string // relay base URL
	Bootstrap  string // bootstrap server base URL
	Checkpoint string // the client.FileStore file
	DB         string // the materialised copy: a SQLite file with the test tables
	Log        string // JSON lines: what the handler was told (bootChildLine)
	// Delay is slept at the start of each window, so that the bootstrap's
	// phases last long enough to be killed in.
	Delay time.Duration
}

// bootChildLine is one line of the consumer's log.
type bootChildLine struct {
	Run  int
	Kind string // "start", "end", or "page" (the first of each run)
	Info client.BootstrapInfo
	// First is the key of the first row of the page, Rows its rows (pages
	// only).
	First string
	Rows  int
}

func init() {
	if cfg := os.Getenv(bootChildEnv); cfg != "" {
		// Never returns: the process is the consumer, not a test run.
		os.Exit(bootChildMain(cfg))
	}
}

// bootChildMain runs the consumer until it is killed, and returns the exit
// code if the client stops by itself.
func bootChildMain(cfgJSON string) int {
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelInfo}))
	var cfg bootChildConfig
	if err := json.Unmarshal([]byte(cfgJSON), &cfg); err != nil {
		log.Error("bad child configuration", "err", err)
		return 2
	}
	db, err := sql.Open("sqlite", "file:"+cfg.DB+"?_pragma=busy_timeout(20000)&_pragma=journal_mode(WAL)")
	if err != nil {
		log.Error("opening the copy", "err", err)
		return 2
	}
	defer db.Close()
	db.SetMaxOpenConns(1)
	lf, err := os.OpenFile(cfg.Log, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
	if err != nil {
		log.Error("opening the log", "err", err)
		return 2
	}
	defer lf.Close()
	h := &bootChild{cfg: cfg, db: db, log: lf}
	c, err := client.New([]string{cfg.Relay}, h,
		client.WithStart(checkpoint.FullHistory()),
		client.WithBootstrap(cfg.Bootstrap),
		client.WithCheckpointStore(client.NewFileStore(cfg.Checkpoint)),
		client.WithMaxBytes(1024),
		client.WithWait(200*time.Millisecond),
		client.WithRetry(5, time.Millisecond, 20*time.Millisecond),
		client.WithRelayRetry(0, 5*time.Millisecond, 200*time.Millisecond),
		client.WithLogger(log),
	)
	if err != nil {
		log.Error("client.New", "err", err)
		return 2
	}
	err = c.Run(context.Background())
	log.Error("the client stopped", "err", err)
	return 1
}

// bootChild is the consumer process's handler: it applies each window to
// the copy in one transaction, by key, so that a window delivered again
// after a crash (the checkpoint is saved after the commit) changes nothing.
type bootChild struct {
	cfg      bootChildConfig
	db       *sql.DB
	log      *os.File
	pageSeen bool // a "page" line was written
}

func (h *bootChild) line(l bootChildLine) error {
	l.Run = h.cfg.Run
	b, err := json.Marshal(l)
	if err != nil {
		return err
	}
	_, err = h.log.Write(append(b, '\n'))
	return err
}

func (h *bootChild) OnBootstrapStart(ctx context.Context, b client.BootstrapInfo) error {
	if b.Snapshot && !b.Resumed {
		// A new snapshot delivers no delete for rows gone since the copy
		// was made: start from nothing.
		for _, tbl := range testTables {
			if _, err := h.db.ExecContext(ctx, "DELETE FROM "+tbl); err != nil {
				return err
			}
		}
	}
	return h.line(bootChildLine{Kind: "start", Info: b})
}

func (h *bootChild) OnBootstrapEnd(_ context.Context, b client.BootstrapInfo) error {
	return h.line(bootChildLine{Kind: "end", Info: b})
}

func (h *bootChild) OnRollback(context.Context, uint64, error) {}

func (h *bootChild) OnWindow(ctx context.Context, w *client.Window) error {
	if h.cfg.Delay > 0 {
		time.Sleep(h.cfg.Delay)
	}
	tx, err := h.db.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	defer tx.Rollback()
	for _, e := range w.Events {
		if err := bootApply(ctx, tx, e); err != nil {
			return fmt.Errorf("window %d: %s key %x: %w", w.SCN, e.Source, e.Key, err)
		}
	}
	if err := tx.Commit(); err != nil {
		return err
	}
	if w.Snapshot && !h.pageSeen && len(w.Events) > 0 {
		h.pageSeen = true
		kv, _ := w.Events[0].KeyValues()
		return h.line(bootChildLine{Kind: "page", First: w.Events[0].Source + "/" + fmt.Sprint(kv...), Rows: len(w.Events)})
	}
	return nil
}

// bootApply applies one event to the copy: an upsert of the row image
// (snapshot rows, inserts, updates) or a delete by key.
func bootApply(ctx context.Context, tx *sql.Tx, e *client.Event) error {
	t := e.Table()
	tbl, ok := strings.CutPrefix(e.Source, "main.")
	if !ok {
		return fmt.Errorf("unexpected source %s", e.Source)
	}
	if e.Op == event.OpDelete {
		kv, err := e.KeyValues()
		if err != nil {
			return err
		}
		var where []string
		for _, k := range t.Key {
			where = append(where, k+" = ?")
		}
		_, err = tx.ExecContext(ctx, "DELETE FROM "+tbl+" WHERE "+strings.Join(where, " AND "), kv...)
		return err
	}
	row, err := e.Row()
	if err != nil {
		return err
	}
	var cols, marks []string
	var vals []any
	for _, c := range t.Columns {
		cols, marks = append(cols, c.Name), append(marks, "?")
		v := row[schema.FieldName(c.Name)]
		if u, ok := v.(map[string]any); ok && len(u) == 1 {
			for _, x := range u { // a union branch
				v = x
			}
		}
		vals = append(vals, v)
	}
	_, err = tx.ExecContext(ctx, "INSERT OR REPLACE INTO "+tbl+"("+strings.Join(cols, ", ")+") VALUES ("+strings.Join(marks, ", ")+")", vals...)
	return err
}

// bootProc is the consumer process, seen from the test.
type bootProc struct {
	t   *testing.T
	cfg bootChildConfig
	out string // the processes' stderr, appended
	cmd *exec.Cmd
	// exited receives Wait's result when the process ends.
	exited chan error
}

func newBootProc(t *testing.T, e *bootEnv) *bootProc {
	dir := t.TempDir()
	p := &bootProc{t: t, out: filepath.Join(dir, "child.log"), cfg: bootChildConfig{
		Relay: relayURL(e.relay), Bootstrap: e.url, Checkpoint: filepath.Join(dir, "checkpoint.json"),
		DB: filepath.Join(dir, "copy.db"), Log: filepath.Join(dir, "handler.jsonl"),
	}}
	db, err := sql.Open("sqlite", "file:"+p.cfg.DB+"?_pragma=journal_mode(WAL)")
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	if _, err := db.Exec(testSchema); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		p.kill()
		if t.Failed() {
			b, _ := os.ReadFile(p.out)
			t.Logf("consumer processes' output:\n%s", b)
		}
	})
	return p
}

// start runs the consumer process; delay is its per-window delay.
func (p *bootProc) start(delay time.Duration) {
	p.t.Helper()
	p.cfg.Run++
	p.cfg.Delay = delay
	cfg, err := json.Marshal(p.cfg)
	if err != nil {
		p.t.Fatal(err)
	}
	out, err := os.OpenFile(p.out, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
	if err != nil {
		p.t.Fatal(err)
	}
	defer out.Close()
	fmt.Fprintf(out, "--- run %d (delay %v)\n", p.cfg.Run, delay)
	p.cmd = exec.Command(os.Args[0])
	p.cmd.Env = append(os.Environ(), bootChildEnv+"="+string(cfg))
	p.cmd.Stdout, p.cmd.Stderr = out, out
	p.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := p.cmd.Start(); err != nil {
		p.t.Fatal(err)
	}
	p.exited = make(chan error, 1)
	go func(cmd *exec.Cmd, exited chan<- error) { exited <- cmd.Wait() }(p.cmd, p.exited)
}

// kill sends SIGKILL: the consumer gets no chance to save or flush
// anything.
func (p *bootProc) kill() {
	if p.cmd == nil {
		return
	}
	p.cmd.Process.Kill()
	<-p.exited
	p.cmd = nil
}

// checkpoint reads the consumer's checkpoint file; ok is false while there
// is none.
func (p *bootProc) checkpoint() (cp checkpoint.Checkpoint, ok bool) {
	p.t.Helper()
	b, err := os.ReadFile(p.cfg.Checkpoint)
	if errors.Is(err, os.ErrNotExist) {
		return cp, false
	}
	if err != nil {
		p.t.Fatal(err)
	}
	if cp, err = checkpoint.Parse(b); err != nil {
		p.t.Fatalf("checkpoint file: %v", err)
	}
	return cp, true
}

// watch polls the checkpoint file until until returns true for it, calling
// check with every checkpoint seen; it fails the test if the process exits
// or d passes first. It returns the checkpoint until accepted.
func (p *bootProc) watch(d time.Duration, what string, check func(checkpoint.Checkpoint), until func(checkpoint.Checkpoint) bool) checkpoint.Checkpoint {
	p.t.Helper()
	deadline := time.Now().Add(d)
	var last checkpoint.Checkpoint
	for {
		select {
		case err := <-p.exited:
			p.exited <- err
			p.t.Fatalf("the consumer exited while waiting for %s: %v", what, err)
		default:
		}
		if cp, ok := p.checkpoint(); ok {
			last = cp
			if check != nil {
				check(cp)
			}
			if until(cp) {
				return cp
			}
		}
		if time.Now().After(deadline) {
			p.t.Fatalf("timed out waiting for %s; last checkpoint %s", what, last)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

// lines reads the consumer's handler log.
func (p *bootProc) lines() []bootChildLine {
	p.t.Helper()
	b, err := os.ReadFile(p.cfg.Log)
	if err != nil {
		p.t.Fatal(err)
	}
	var out []bootChildLine
	for _, s := range strings.Split(strings.TrimSpace(string(b)), "\n") {
		var l bootChildLine
		if err := json.Unmarshal([]byte(s), &l); err != nil {
			p.t.Fatalf("handler log line %q: %v", s, err)
		}
		out = append(out, l)
	}
	return out
}

// TestBootstrapClientKill9 kills a bootstrapping consumer process with
// SIGKILL twice, mid-snapshot and mid-catch-up, while writes go on at the
// source, and restarts it each time. Each restart must resume from the
// checkpoint file (the snapshot's progress never goes back, the catch-up
// never moves back), and the consumer's copy must end equal to the source
// tables.
func TestBootstrapClientKill9(t *testing.T) {
	e := bootStart(t, 1<<20)
	w := newWriter(e.db, 72)
	e.write(t, w, 3000)
	p := newBootProc(t, e)
	// The writes go on through both phases, so the log after the
	// snapshot's SCN, which the catch-up delivers, keeps growing.
	stop := e.bootWriting(t, w, 5, 5*time.Millisecond)
	const delay = 25 * time.Millisecond

	p.start(delay)
	p.watch(30*time.Second, "a snapshot checkpoint with rows", nil, func(cp checkpoint.Checkpoint) bool {
		return cp.Mode == checkpoint.BootstrapSnapshot && cp.Bootstrap.Rows > 0
	})
	p.kill()
	cp1, _ := p.checkpoint()
	if cp1.Mode != checkpoint.BootstrapSnapshot {
		t.Fatalf("killed after the snapshot: checkpoint %s", cp1)
	}
	t.Logf("killed mid-snapshot at %s", cp1)

	p.start(delay)
	inSnapshot := func(cp checkpoint.Checkpoint) {
		b := cp.Bootstrap
		if cp.Mode == checkpoint.BootstrapSnapshot && (b.Rows < cp1.Bootstrap.Rows || b.StartSCN != cp1.Bootstrap.StartSCN || b.Store != cp1.Bootstrap.Store) {
			t.Fatalf("the restarted snapshot went back: checkpoint %s after %s", cp, cp1)
		}
		if cp.Mode == checkpoint.BootstrapCatchup && b.StartSCN != cp1.Bootstrap.StartSCN {
			t.Fatalf("the catch-up starts at scn %d, the snapshot was at %d", b.StartSCN, cp1.Bootstrap.StartSCN)
		}
	}
	var target uint64 // the catch-up's target, once a catch-up checkpoint showed it
	p.watch(60*time.Second, "a checkpoint inside the catch-up", func(cp checkpoint.Checkpoint) {
		inSnapshot(cp)
		if cp.Mode == checkpoint.BootstrapCatchup {
			target = cp.Bootstrap.TargetSCN
		}
		if cp.Mode == checkpoint.Online && cp.SCN < target {
			// A consumer killed now would restart online, its bootstrap
			// unfinished (no OnBootstrapEnd), from a copy that is not yet
			// consistent: rows the snapshot left out come back only with
			// the log windows up to the target.
			t.Fatalf("the client saved the online checkpoint %s inside its catch-up to scn %d: "+
				"a checkpoint taken during the catch-up must stay in mode bootstrap_catchup until the target", cp, target)
		}
		if cp.Mode == checkpoint.Online && target != 0 {
			t.Fatalf("the catch-up to scn %d ended (checkpoint %s) before a checkpoint inside it was seen", target, cp)
		}
	}, func(cp checkpoint.Checkpoint) bool {
		return cp.Mode == checkpoint.BootstrapCatchup && cp.SCN > cp.Bootstrap.StartSCN && cp.SCN < cp.Bootstrap.TargetSCN
	})
	p.kill()
	cp2, _ := p.checkpoint()
	if cp2.Mode != checkpoint.BootstrapCatchup || cp2.SCN >= cp2.Bootstrap.TargetSCN {
		t.Fatalf("killed after the catch-up: checkpoint %s", cp2)
	}
	t.Logf("killed mid-catch-up at %s", cp2)

	p.start(0)
	p.watch(60*time.Second, "the consumer to return to the relay", func(cp checkpoint.Checkpoint) {
		if cp.Mode == checkpoint.BootstrapSnapshot || cp.Mode == checkpoint.BootstrapCatchup && cp.SCN < cp2.SCN {
			t.Fatalf("the restarted catch-up went back: checkpoint %s after %s", cp, cp2)
		}
	}, func(cp checkpoint.Checkpoint) bool { return cp.Mode == checkpoint.Online })
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	// The relay polls the source: its newest window is the writer's last
	// transaction only once the store (fed by the relay) holds it.
	if err := e.waitStored(); err != nil {
		t.Fatal(err)
	}
	last := e.relay.Buffer().Info().MaxSCN
	p.watch(30*time.Second, fmt.Sprintf("the consumer to reach the relay's newest window %d", last), nil, func(cp checkpoint.Checkpoint) bool {
		return cp.Mode == checkpoint.Online && cp.SCN >= last
	})
	p.kill()

	got, err := sql.Open("sqlite", "file:"+p.cfg.DB+"?mode=ro")
	if err != nil {
		t.Fatal(err)
	}
	defer got.Close()
	if d := cmp.Diff(dbState(t, e.db), dbState(t, got), cmpopts.EquateEmpty()); d != "" {
		t.Fatalf("the consumer's copy differs from the database (-db +copy):\n%s", d)
	}

	// What the handler was told: a new snapshot; the same snapshot resumed,
	// not from its first page; the same bootstrap resumed in its catch-up,
	// and its end.
	lines := p.lines()
	t.Logf("handler log: %+v", lines)
	byRun := map[int][]bootChildLine{}
	for _, l := range lines {
		byRun[l.Run] = append(byRun[l.Run], l)
	}
	first := func(run int, kind string) (bootChildLine, bool) {
		for _, l := range byRun[run] {
			if l.Kind == kind {
				return l, true
			}
		}
		return bootChildLine{}, false
	}
	s1, ok1 := first(1, "start")
	s2, ok2 := first(2, "start")
	p1, okp1 := first(1, "page")
	p2, okp2 := first(2, "page")
	switch {
	case !ok1 || !s1.Info.Snapshot || s1.Info.Resumed:
		t.Errorf("run 1: OnBootstrapStart %+v, want a new snapshot", s1)
	case !ok2 || !s2.Info.Snapshot || !s2.Info.Resumed || s2.Info.Rows < cp1.Bootstrap.Rows || s2.Info.StartSCN != s1.Info.StartSCN:
		t.Errorf("run 2: OnBootstrapStart %+v, want the snapshot of run 1 (%+v) resumed after %d rows", s2, s1, cp1.Bootstrap.Rows)
	case !okp1 || !okp2 || p1.First == p2.First:
		t.Errorf("first snapshot page of run 1 %+v, of run 2 %+v: want run 2 to resume after run 1's pages", p1, p2)
	}
	if s3, ok := first(3, "start"); !ok || !s3.Info.Resumed || s3.Info.StartSCN != s1.Info.StartSCN || s3.Info.TargetSCN != cp2.Bootstrap.TargetSCN {
		t.Errorf("run 3: OnBootstrapStart %+v, want the bootstrap of run 1 (%+v) resumed in its catch-up to %d", s3, s1, cp2.Bootstrap.TargetSCN)
	}
	end, ok := first(3, "end")
	// The catch-up may go past the target it had when killed: it ends at
	// the head it sees once no seed is running (seeded rows are only in the
	// bootstrap log).
	if !ok || !end.Info.Snapshot || end.Info.StartSCN != s1.Info.StartSCN || end.Info.TargetSCN < cp2.Bootstrap.TargetSCN {
		t.Errorf("run 3: OnBootstrapEnd %+v, want the end of the snapshot at %d caught up to %d or later", end, s1.Info.StartSCN, cp2.Bootstrap.TargetSCN)
	}
}
