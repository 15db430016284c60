package postgres

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/databus-go/databus/event"
	"github.com/databus-go/databus/internal/dbtest"
	"github.com/databus-go/databus/source"
)

// TestServerRestartAndKill writes single-row transactions continuously
// while the server is restarted cleanly and then killed, and checks that
// the stream has every committed row exactly once.
func TestServerRestartAndKill(t *testing.T) {
	t.Parallel()
	srv := dbtest.Postgres(t)
	e := newEnv(t, srv, "public.t")
	e.exec(t, "CREATE TABLE t (id int PRIMARY KEY, v text)")
	s, _ := open(t, e.cfg)
	r := startRun(t, s, source.Position{})

	// The writer inserts ids in order, one transaction each, and records
	// which commits it saw succeed; a commit cut by the crash may or may
	// not have happened, and the table says which.
	ctx, stop := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	var mu sync.Mutex
	written := 0
	wg.Go(func() {
		var conn *pgx.Conn
		defer func() {
			if conn != nil {
				conn.Close(context.Background())
			}
		}()
		for id := 1; ctx.Err() == nil; {
			if conn == nil {
				c, err := pgx.Connect(ctx, srv.ConnString(e.name))
				if err != nil {
					time.Sleep(20 * time.Millisecond)
					continue
				}
				conn = c
			}
			if _, err := conn.Exec(ctx, "INSERT INTO t VALUES ($1, 'v') ON CONFLICT (id) DO NOTHING", id); err != nil {
				conn.Close(context.Background())
				conn = nil
				continue // the same id again: it may have committed
			}
			mu.Lock()
			written = id
			mu.Unlock()
			id++
			time.Sleep(time.Millisecond)
		}
	})
	waitRows := func(n int) {
		t.Helper()
		deadline := time.Now().Add(30 * time.Second)
		for {
			mu.Lock()
			w := written
			mu.Unlock()
			if w >= n {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("writer stuck at %d rows", w)
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	waitRows(200)
	start := time.Now()
	srv.Restart(t)
	t.Logf("clean restart in %v", time.Since(start))
	waitRows(400)
	srv.Kill(t)
	srv.Start(t)
	waitRows(600)
	stop()
	wg.Wait()

	db := srv.DB(t, e.name) // the env's pool predates the restarts
	var lsn string
	if err := db.QueryRow(`SELECT pg_logical_emit_message(false, 'databus', 'heartbeat 0')::text, txid_current()`).Scan(&lsn, new(int64)); err != nil {
		t.Fatal(err)
	}
	ws := r.waitSCN(t, parseLSN(t, lsn), 60*time.Second)
	r.stop(t)
	checkWindows(t, ws)
	var max int
	if err := db.QueryRow("SELECT count(*) FROM t").Scan(&max); err != nil {
		t.Fatal(err)
	}
	seen := map[int]int{}
	reg := newRegistry(t, nil)
	for _, w := range ws {
		for i := range w.Events {
			ev := &w.Events[i]
			reg.observe(w, ev)
			if ev.Kind == event.KindData {
				row, _ := reg.decode(ev)
				seen[row["id"].(int)]++
			}
		}
	}
	for id := 1; id <= max; id++ {
		if seen[id] != 1 {
			t.Fatalf("row %d seen %d times", id, seen[id])
		}
	}
	if len(seen) != max {
		t.Fatalf("%d rows in the stream, %d in the table", len(seen), max)
	}
	if st := s.Stats(); st.Reconnects < 2 {
		t.Fatalf("%d reconnects", st.Reconnects)
	}
	t.Logf("%d rows, %d windows, %d reconnects", max, len(ws), s.Stats().Reconnects)
}

// TestSlotDropped checks the errors for a slot dropped while capture runs
// and for a slot recreated behind the relay's back.
func TestSlotDropped(t *testing.T) {
	t.Parallel()
	srv := dbtest.SharedPostgres(t)
	e := newEnv(t, srv, "public.t")
	e.exec(t, "CREATE TABLE t (id int PRIMARY KEY)")
	s, _ := open(t, e.cfg)
	e.exec(t, "INSERT INTO t VALUES (1)")
	end := e.mark(t)
	r := startRun(t, s, source.Position{})
	ws := r.waitSCN(t, end, 30*time.Second)
	// Kill the walsender and drop the slot; the adapter, reconnecting,
	// finds it gone.
	deadline := time.Now().Add(20 * time.Second)
	for {
		_, err := e.db.Exec(`SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots WHERE slot_name = $1 AND active_pid IS NOT NULL`, e.name)
		if err == nil {
			_, err = e.db.Exec(`SELECT pg_drop_replication_slot($1)`, e.name)
		}
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("drop slot: %v", err)
		}
		time.Sleep(5 * time.Millisecond)
	}
	err := r.wait(t, 30*time.Second)
	var lost *SlotLostError
	if !errors.As(err, &lost) || lost.Reason != "dropped" {
		t.Fatalf("Run after the slot was dropped: %v", err)
	}
	if !strings.Contains(err.Error(), "does not exist") || !strings.Contains(err.Error(), "re-seed the consumers") {
		t.Fatalf("error does not say what happened and what to do: %v", err)
	}
	// Open recreates the slot (CreateSlot); resuming from the old position
	// must still fail: the changes in between are gone.
	s2, _ := open(t, e.cfg)
	e.exec(t, "INSERT INTO t VALUES (2)")
	r2 := startRun(t, s2, ws[len(ws)-1].Position)
	err = r2.wait(t, 30*time.Second)
	if !errors.As(err, &lost) || lost.Reason != "ahead" {
		t.Fatalf("Run from before a recreated slot: %v", err)
	}
	t.Log(err)
}

// TestWalLevelReplica checks that a server without logical decoding is
// refused with an error naming the setting.
func TestWalLevelReplica(t *testing.T) {
	t.Parallel()
	srv := dbtest.Postgres(t, dbtest.PostgresSettings("wal_level=replica"))
	srv.DB(t, "app")
	s, err := New(Config{ConnString: Secret(srv.ConnString("app")), Tables: []string{"public.t"}, StateDir: t.TempDir()}, WithLogger(quietLogger()))
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	_, err = s.Open(context.Background())
	var se *SettingError
	if !errors.As(err, &se) || se.Setting != "wal_level" {
		t.Fatalf("Open: %v", err)
	}
	if want := "databus: postgres wal_level is replica; set wal_level=logical in postgresql.conf and restart"; err.Error() != want {
		t.Fatalf("Open: %q, want %q", err, want)
	}
}

// TestNonSuperuser captures as a role WITH REPLICATION LOGIN that owns the
// tables (to create the publication), and checks that a role without
// REPLICATION is refused, and that the password never shows in errors or
// logs.
func TestNonSuperuser(t *testing.T) {
	t.Parallel()
	srv := dbtest.SharedPostgres(t)
	e := newEnv(t, srv, "public.t")
	role, bad, password := e.name+"_cdc", e.name+"_nope", "s3cr3t-pw-x"
	srv.Exec(t,
		"DROP ROLE IF EXISTS "+role, "DROP ROLE IF EXISTS "+bad,
		"CREATE ROLE "+role+" WITH REPLICATION LOGIN PASSWORD '"+password+"'",
		"CREATE ROLE "+bad+" WITH LOGIN PASSWORD '"+password+"'",
		"GRANT CREATE ON DATABASE "+e.name+" TO "+role,
	)
	t.Cleanup(func() {
		dropSlot(t, srv, e.name)
		srv.Exec(t, "DROP DATABASE IF EXISTS "+e.name+" WITH (FORCE)", "DROP ROLE IF EXISTS "+role, "DROP ROLE IF EXISTS "+bad)
	})
	e.exec(t, "CREATE TABLE t (id int PRIMARY KEY, v text)", "ALTER TABLE t OWNER TO "+role)

	var logs bytes.Buffer
	var logMu sync.Mutex
	logger := slog.New(slog.NewTextHandler(&lockedWriter{w: &logs, mu: &logMu}, &slog.HandlerOptions{Level: slog.LevelDebug}))

	cfg := e.cfg
	cfg.ConnString = Secret(srv.UserConnString(bad, password, e.name))
	sBad, err := New(cfg, WithLogger(logger))
	if err != nil {
		t.Fatal(err)
	}
	_, err = sBad.Open(context.Background())
	var se *SettingError
	if !errors.As(err, &se) || !strings.Contains(err.Error(), "REPLICATION") || !strings.Contains(err.Error(), "ALTER ROLE") {
		t.Fatalf("Open as a role without REPLICATION: %v", err)
	}
	sBad.Close()

	cfg.ConnString = Secret(srv.UserConnString(role, password, e.name))
	s, err := New(cfg, WithLogger(logger))
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if _, err := s.Open(context.Background()); err != nil {
		t.Fatal(err)
	}
	r := startRun(t, s, source.Position{})
	e.exec(t, "INSERT INTO t VALUES (1, 'a')", "UPDATE t SET v = 'b'")
	// Wait for the adapter's own heartbeat (a timestamp; the test's marks
	// have none): the role may write heartbeat messages.
	deadline := time.Now().Add(20 * time.Second)
	for {
		ws := r.snapshot()
		data, beat := 0, false
		for _, w := range ws {
			data += len(w.Events)
			beat = beat || (len(w.Events) == 0 && w.Timestamp != 0)
		}
		if data >= 3 && beat { // schema change, insert, update
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d events, heartbeat %v", data, beat)
		}
		time.Sleep(20 * time.Millisecond)
	}
	r.stop(t)
	logMu.Lock()
	defer logMu.Unlock()
	if strings.Contains(logs.String(), password) || strings.Contains(fmt.Sprintf("%v %+v %#v", cfg, cfg, cfg), password) {
		t.Fatal("the password shows in the logs or in the formatted config")
	}
}

type lockedWriter struct {
	w  *bytes.Buffer
	mu *sync.Mutex
}

func (l *lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}

// TestOpenRefusals covers the refusals of Open that need no special server:
// missing tables, a publication that does not publish deletes, a missing
// slot or publication with creation off.
func TestOpenRefusals(t *testing.T) {
	t.Parallel()
	srv := dbtest.SharedPostgres(t)
	e := newEnv(t, srv, "public.t")
	e.exec(t, "CREATE TABLE t (id int PRIMARY KEY)", "CREATE TABLE u (id int PRIMARY KEY)")
	no := false
	try := func(mod func(*Config), want string) {
		t.Helper()
		cfg := e.cfg
		mod(&cfg)
		s, err := New(cfg, WithLogger(quietLogger()))
		if err != nil {
			t.Fatal(err)
		}
		defer s.Close()
		_, err = s.Open(context.Background())
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Fatalf("Open: %v, want an error containing %q", err, want)
		}
	}
	try(func(c *Config) { c.Tables = []string{"public.missing"} }, "table public.missing (Tables[0]) does not exist")
	try(func(c *Config) { c.CreatePublication = &no; c.Publication = "nopub" }, `publication "nopub" does not exist; create it with CREATE PUBLICATION "nopub" FOR TABLE "public"."t"`)
	try(func(c *Config) { c.CreateSlot = &no; c.Slot = e.name + "_none" }, "does not exist; create it with SELECT pg_create_logical_replication_slot")
	e.exec(t, `CREATE PUBLICATION partial FOR TABLE t WITH (publish = 'insert, update')`)
	try(func(c *Config) { c.Publication = "partial" }, "publication partial is not publishing delete, truncate; run ALTER PUBLICATION")
	e.exec(t, `CREATE PUBLICATION other FOR TABLE u`)
	try(func(c *Config) { c.Publication = "other"; c.CreatePublication = &no }, `publication "other" does not include "public"."t"; run ALTER PUBLICATION "other" ADD TABLE "public"."t"`)
	e.exec(t, `CREATE PUBLICATION filtered FOR TABLE t WHERE (id > 0)`)
	try(func(c *Config) { c.Publication = "filtered" }, "a row filter or column list")
	// With creation allowed, a publication missing a table gets it.
	cfg := e.cfg
	cfg.Publication = "other"
	s, _ := open(t, cfg)
	s.Close()
	var n int
	if err := e.db.QueryRow(`SELECT count(*) FROM pg_publication_tables WHERE pubname = 'other'`).Scan(&n); err != nil || n != 2 {
		t.Fatalf("publication other has %d tables, %v", n, err)
	}
}
