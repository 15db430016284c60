package sqlitestore_test

import (
	"bufio"
	"bytes"
	"context"
	"database/sql"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/databus-go/databus/bootstrap/store"
	"github.com/databus-go/databus/bootstrap/store/sqlitestore"
	"github.com/databus-go/databus/bootstrap/store/storetest"
	"github.com/databus-go/databus/event"
)

// opener returns a function opening the store at path, failing t on error.
func opener(path string, opts sqlitestore.Options) func(t *testing.T) store.Store {
	return func(t *testing.T) store.Store {
		t.Helper()
		s, err := sqlitestore.Open(path, opts)
		if err != nil {
			t.Fatalf("Open(%s): %v", path, err)
		}
		return s
	}
}

func TestConformance(t *testing.T) {
	storetest.Run(t, storetest.Harness{Open: func(t *testing.T) (store.Store, func(*testing.T) store.Store) {
		open := opener(filepath.Join(t.TempDir(), "sub", "store.db"), sqlitestore.Options{})
		return open(t), open
	}})
}

func TestConformanceSmallPool(t *testing.T) {
	// One read connection and SyncNormal: no call may need two read
	// connections at once, and the weaker sync changes nothing visible.
	if testing.Short() {
		t.Skip("the default options' run covers the suite")
	}
	storetest.Run(t, storetest.Harness{Open: func(t *testing.T) (store.Store, func(*testing.T) store.Store) {
		open := opener(filepath.Join(t.TempDir(), "store.db"), sqlitestore.Options{ReadConns: 1, Sync: sqlitestore.SyncNormal})
		return open(t), open
	}})
}

var ctx = context.Background()

func mustOpen(t *testing.T, path string) *sqlitestore.Store {
	t.Helper()
	s, err := sqlitestore.Open(path, sqlitestore.Options{})
	if err != nil {
		t.Fatalf("Open(%s): %v", path, err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// batch returns batch i of the crash and file tests: windows 3i+1..3i+3
// after 3i, rewriting keys 0..29 (ten per window) with "batch i".
func batch(i int) *store.Batch {
	b := &store.Batch{After: uint64(3 * i)}
	payload := []byte(fmt.Sprintf("batch %06d", i))
	for j := range 3 {
		scn := uint64(3*i + j + 1)
		w := store.Window{SCN: scn, Timestamp: time.Now().UnixNano()}
		for k := range 10 {
			key := event.AppendKeyInt(nil, int64(10*j+k))
			e := event.Event{Kind: event.KindData, Op: event.OpInsert, SCN: scn, Timestamp: w.Timestamp, Source: 1, SchemaVersion: 1, Key: key, Payload: payload}
			fr, _ := event.AppendFrame(nil, &e)
			w.Frames = append(w.Frames, fr...)
			w.Rows = append(w.Rows, store.Row{Source: 1, Key: key, SCN: scn, Op: store.RowUpsert, Frame: fr})
		}
		eow := event.EndOfWindow(scn, w.Timestamp, 10, "")
		w.Frames, _ = event.AppendFrame(w.Frames, &eow)
		b.Windows = append(b.Windows, w)
	}
	return b
}

// checkBatches checks that s holds exactly batches 0..n-1: the state, the
// whole log, and a snapshot of keys 0..29 all from batch n-1.
func checkBatches(t *testing.T, s store.Store, n int) {
	t.Helper()
	st, err := s.State(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if st.Head != uint64(3*n) || st.Windows != uint64(3*n) || st.LowWatermark != 0 || st.Empty != (n == 0) {
		t.Fatalf("State = %+v, want head %d with %d windows", st, 3*n, 3*n)
	}
	p, err := s.Log(ctx, store.LogQuery{After: 0, UpTo: st.Head, MaxBytes: 64 << 20})
	if err != nil || p.Windows != 3*n || p.Last != st.Head {
		t.Fatalf("Log = %d windows up to %d, %v; want %d windows up to %d", p.Windows, p.Last, err, 3*n, st.Head)
	}
	sp, err := s.Snapshot(ctx, store.SnapshotQuery{AsOf: st.Head, MaxRows: 100, MaxBytes: 1 << 20})
	if err != nil {
		t.Fatal(err)
	}
	if n == 0 {
		if sp.Rows != 0 {
			t.Fatalf("empty store has %d rows", sp.Rows)
		}
		return
	}
	want := fmt.Sprintf("batch %06d", n-1)
	rows := 0
	for b := sp.Frames; len(b) > 0; rows++ {
		e, m, err := event.Decode(b)
		if err != nil {
			t.Fatal(err)
		}
		if string(e.Payload) != want {
			t.Fatalf("row %d holds %q, want %q", rows, e.Payload, want)
		}
		b = b[m:]
	}
	if rows != 30 || sp.Next != nil {
		t.Fatalf("snapshot holds %d rows (Next %v), want 30", rows, sp.Next)
	}
}

func TestOpenCreatesFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "a", "b", "store.db")
	s := mustOpen(t, path)
	if s.Path() != path {
		t.Fatalf("Path() = %q, want %q", s.Path(), path)
	}
	if err := s.Apply(ctx, batch(0)); err != nil {
		t.Fatal(err)
	}
	// The file is an SQLite database with the documented tables, which
	// other tools may read with plain SQL while the store is open.
	db, err := sql.Open("sqlite", "file:"+path+"?mode=ro")
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	var appID, version, rows, windows int
	var mode string
	if err := db.QueryRow("PRAGMA application_id").Scan(&appID); err != nil {
		t.Fatal(err)
	}
	if err := db.QueryRow("PRAGMA user_version").Scan(&version); err != nil {
		t.Fatal(err)
	}
	if err := db.QueryRow("PRAGMA journal_mode").Scan(&mode); err != nil {
		t.Fatal(err)
	}
	if appID != 0x44425354 || version != 1 || mode != "wal" {
		t.Fatalf("application_id %#x, user_version %d, journal_mode %q; want 0x44425354, 1, wal", appID, version, mode)
	}
	if err := db.QueryRow("SELECT count(*) FROM snapshot WHERE deleted = 0").Scan(&rows); err != nil {
		t.Fatal(err)
	}
	if err := db.QueryRow("SELECT count(*) FROM log").Scan(&windows); err != nil {
		t.Fatal(err)
	}
	for _, table := range []string{"meta", "schemas", "seeds"} {
		if _, err := db.Exec("SELECT * FROM " + table); err != nil {
			t.Fatalf("table %s: %v", table, err)
		}
	}
	if rows != 30 || windows != 3 {
		t.Fatalf("plain SQL sees %d rows and %d windows, want 30 and 3", rows, windows)
	}
}

func TestOpenRefusesOtherFiles(t *testing.T) {
	dir := t.TempDir()
	text := filepath.Join(dir, "notes.txt")
	content := []byte("these are not the rows you are looking for\n")
	if err := os.WriteFile(text, content, 0o644); err != nil {
		t.Fatal(err)
	}
	other := filepath.Join(dir, "other.db")
	db, err := sql.Open("sqlite", "file:"+other)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := db.Exec("CREATE TABLE customers (id INTEGER PRIMARY KEY, name TEXT)"); err != nil {
		t.Fatal(err)
	}
	db.Close()
	newer := filepath.Join(dir, "newer.db")
	s, err := sqlitestore.Open(newer, sqlitestore.Options{})
	if err != nil {
		t.Fatal(err)
	}
	s.Close()
	db, err = sql.Open("sqlite", "file:"+newer)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := db.Exec("PRAGMA user_version = 2"); err != nil {
		t.Fatal(err)
	}
	db.Close()

	for _, c := range []struct {
		path, want string
		notStore   bool
	}{
		{text, "is not an SQLite database", true},
		{other, "is an SQLite database of another application", true},
		{newer, "has store format version 2; this build reads version 1", false},
		{dir, "", false},
		{"", "empty path", false},
	} {
		s, err := sqlitestore.Open(c.path, sqlitestore.Options{})
		if err == nil {
			s.Close()
			t.Fatalf("Open(%q) succeeded", c.path)
		}
		if errors.Is(err, sqlitestore.ErrNotStore) != c.notStore || !strings.Contains(err.Error(), c.want) {
			t.Fatalf("Open(%q) = %v; want an error containing %q (ErrNotStore: %v)", c.path, err, c.want, c.notStore)
		}
	}
	if got, _ := os.ReadFile(text); !bytes.Equal(got, content) {
		t.Fatalf("Open changed a file it refused: %q", got)
	}
	if _, err := os.Stat(text + "-wal"); !os.IsNotExist(err) {
		t.Fatalf("Open left a WAL beside a file it refused: %v", err)
	}
}

func TestOptionsValidation(t *testing.T) {
	path := filepath.Join(t.TempDir(), "s.db")
	for _, o := range []sqlitestore.Options{{ReadConns: -1}, {BusyTimeout: -time.Second}, {CacheMiB: -1}, {Sync: 7}} {
		if s, err := sqlitestore.Open(path, o); err == nil {
			s.Close()
			t.Fatalf("Open with %+v succeeded", o)
		}
	}
}

// TestCrashImage copies the files of an open store (the WAL not
// checkpointed) as a machine crash would leave them, and opens the copy:
// every batch Apply returned for is there.
func TestCrashImage(t *testing.T) {
	dir := t.TempDir()
	s := mustOpen(t, filepath.Join(dir, "store.db"))
	for i := range 5 {
		if err := s.Apply(ctx, batch(i)); err != nil {
			t.Fatal(err)
		}
	}
	img := t.TempDir()
	for _, name := range []string{"store.db", "store.db-wal"} {
		b, err := os.ReadFile(filepath.Join(dir, name))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(img, name), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	c := mustOpen(t, filepath.Join(img, "store.db"))
	checkBatches(t, c, 5)
	orig, _ := s.State(ctx)
	copied, _ := c.State(ctx)
	if orig.ID != copied.ID {
		t.Fatalf("a copy of the store has another ID: %q vs %q", copied.ID, orig.ID)
	}
}

const crashChildEnv = "SQLITESTORE_CRASH_CHILD"

// crashChild is the process TestKill kills: it applies batches to the
// store named by the environment forever, reporting each one on stdout
// once Apply has returned.
func crashChild() {
	s, err := sqlitestore.Open(os.Getenv(crashChildEnv), sqlitestore.Options{})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	for i := 0; ; i++ {
		if err := s.Apply(context.Background(), batch(i)); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(2)
		}
		fmt.Fprintf(os.Stdout, "applied %d\n", i)
	}
}

// TestKill kills a process that is applying batches (SIGKILL, at a random
// point of its work) and opens the store it left: it holds a whole number
// of batches, at least every one reported applied, consistent in state,
// log and snapshot, and takes the next batch.
func TestKill(t *testing.T) {
	path := filepath.Join(t.TempDir(), "store.db")
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), crashChildEnv+"="+path)
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	sc := bufio.NewScanner(out)
	reported := -1
	for sc.Scan() {
		if _, err := fmt.Sscanf(sc.Text(), "applied %d", &reported); err != nil {
			t.Fatalf("child said %q", sc.Text())
		}
		if reported >= 20 {
			break
		}
	}
	if err := cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	go io.Copy(io.Discard, out)
	cmd.Wait()
	if reported < 20 {
		t.Fatalf("child stopped after batch %d: %s", reported, stderr.String())
	}
	s := mustOpen(t, path)
	st, err := s.State(ctx)
	if err != nil {
		t.Fatal(err)
	}
	n := int(st.Head / 3)
	if n <= reported || st.Head%3 != 0 {
		t.Fatalf("after the kill the head is %d; want a batch boundary at or after batch %d (head %d)", st.Head, reported, 3*(reported+1))
	}
	checkBatches(t, s, n)
	if err := s.Apply(ctx, batch(n)); err != nil {
		t.Fatalf("Apply after the crash: %v", err)
	}
	checkBatches(t, s, n+1)
}

// TestApplyRefusesBadRows: a row whose frame does not match it would make
// Snapshot serve the wrong row or a wrong cursor; the whole batch is
// refused.
func TestApplyRefusesBadRows(t *testing.T) {
	s := mustOpen(t, filepath.Join(t.TempDir(), "s.db"))
	if err := s.Apply(ctx, batch(0)); err != nil {
		t.Fatal(err)
	}
	mutations := map[string]func(b *store.Batch){
		"row scn":         func(b *store.Batch) { b.Windows[1].Rows[0].SCN++ },
		"row key":         func(b *store.Batch) { b.Windows[1].Rows[0].Key = event.AppendKeyInt(nil, 999) },
		"row source":      func(b *store.Batch) { b.Windows[1].Rows[0].Source = 2 },
		"truncated frame": func(b *store.Batch) { f := b.Windows[1].Rows[0].Frame; b.Windows[1].Rows[0].Frame = f[:len(f)-1] },
		"two frames": func(b *store.Batch) {
			f := b.Windows[1].Rows[0].Frame
			b.Windows[1].Rows[0].Frame = append(f[:len(f):len(f)], f...)
		},
		"no frame":           func(b *store.Batch) { b.Windows[1].Rows[0].Frame = nil },
		"update frame":       func(b *store.Batch) { b.Windows[1].Rows[0].Frame = reframe(b.Windows[1].Rows[0].Frame, event.OpUpdate) },
		"unknown op":         func(b *store.Batch) { b.Windows[1].Rows[0].Op = 9 },
		"scn above int64":    func(b *store.Batch) { b.Windows[2].SCN = 1 << 63 },
		"after above int64":  func(b *store.Batch) { b.After = 1 << 63 },
		"seed without table": func(b *store.Batch) { b.Seeds = []store.SeedProgress{{Run: "x"}} },
	}
	for name, mutate := range mutations {
		b := batch(1)
		mutate(b)
		err := s.Apply(ctx, b)
		if !errors.Is(err, sqlitestore.ErrBadBatch) {
			t.Fatalf("%s: Apply = %v, want ErrBadBatch", name, err)
		}
		checkBatches(t, s, 1)
	}
}

// reframe re-encodes a frame with another op.
func reframe(f []byte, op event.Op) []byte {
	e, _, err := event.Decode(f)
	if err != nil {
		panic(err)
	}
	e.Op = op
	out, _ := event.AppendFrame(nil, &e)
	return out
}

func TestClosed(t *testing.T) {
	s, err := sqlitestore.Open(filepath.Join(t.TempDir(), "s.db"), sqlitestore.Options{})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	if _, err := s.State(ctx); !errors.Is(err, sqlitestore.ErrClosed) {
		t.Fatalf("State after Close = %v, want ErrClosed", err)
	}
	if err := s.Apply(ctx, batch(0)); !errors.Is(err, sqlitestore.ErrClosed) {
		t.Fatalf("Apply after Close = %v, want ErrClosed", err)
	}
	if _, err := s.Snapshot(ctx, store.SnapshotQuery{MaxRows: 1, MaxBytes: 1}); !errors.Is(err, sqlitestore.ErrClosed) {
		t.Fatalf("Snapshot after Close = %v, want ErrClosed", err)
	}
}
