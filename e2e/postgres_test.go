package e2e

import (
	"context"
	"database/sql"
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/databus-go/databus/checkpoint"
	"github.com/databus-go/databus/client"
	"github.com/databus-go/databus/internal/dbtest"
	"github.com/databus-go/databus/source/postgres"
)

// The PostgreSQL test tables, in database app: the MariaDB tables' shapes
// in PostgreSQL types. acct has REPLICA IDENTITY FULL (whole before-images);
// tag and item the default (deletes and key changes carry the key only);
// item.body is stored out of line without compression when long, so
// updates that leave it alone send it as unchanged TOAST, which the
// consumer must take from its previous copy of the row.
var postgresSchema = []string{
	`CREATE TABLE acct (id int PRIMARY KEY, owner text NOT NULL, balance bigint NOT NULL,
		amount numeric(12,2), note bytea, seen timestamptz, txn bigint NOT NULL)`,
	`ALTER TABLE acct REPLICA IDENTITY FULL`,
	`CREATE TABLE tag (k1 text NOT NULL, k2 int NOT NULL, val double precision, txn bigint NOT NULL, PRIMARY KEY (k1, k2))`,
	`CREATE TABLE item (id bigint PRIMARY KEY, sku varchar(8) NOT NULL, qty int NOT NULL, body text, txn bigint NOT NULL)`,
	`ALTER TABLE item ALTER COLUMN body SET STORAGE EXTERNAL`,
}

var postgresTables = []string{"public.acct", "public.tag", "public.item"}

var postgresDialect = &dialect{
	upsertAcct: `INSERT INTO acct (id, owner, balance, amount, note, seen, txn) VALUES ($1, $2, $3, $4::numeric, $5, $6, $7)
		ON CONFLICT (id) DO UPDATE SET balance = acct.balance + excluded.balance, amount = excluded.amount,
		note = excluded.note, seen = excluded.seen, txn = excluded.txn`,
	bumpAcct:   `UPDATE acct SET balance = (balance * 2) % 1000003, txn = $1 WHERE id % 7 = $2`,
	delAcct:    `DELETE FROM acct WHERE id = $1`,
	upsertTag:  `INSERT INTO tag (k1, k2, val, txn) VALUES ($1, $2, $3, $4) ON CONFLICT (k1, k2) DO UPDATE SET val = excluded.val, txn = excluded.txn`,
	delTag:     `DELETE FROM tag WHERE k1 = $1`,
	moveTag:    `UPDATE tag SET k2 = k2 + 100, txn = $1 WHERE k1 = $2 AND k2 = $3 AND NOT EXISTS (SELECT 1 FROM tag t2 WHERE t2.k1 = $2 AND t2.k2 = $3 + 100)`,
	upsertItem: `INSERT INTO item (id, sku, qty, body, txn) VALUES ($1, $2, $3, $4, $5) ON CONFLICT (id) DO UPDATE SET sku = excluded.sku, qty = excluded.qty, body = excluded.body, txn = excluded.txn`,
	moveItem:   `UPDATE item SET id = id + 1000, txn = $1 WHERE id = $2 AND NOT EXISTS (SELECT 1 FROM item i2 WHERE i2.id = $2 + 1000)`,
	touchItem:  `UPDATE item SET qty = qty + 1, txn = $1 WHERE id = $2`,
	delItem:    `DELETE FROM item WHERE id = $1`,
	seen:       func(t time.Time) any { return t },
}

// postgresApp starts a private PostgreSQL server with the test tables in
// database app and returns it with a pool on app.
func postgresApp(t testing.TB, opts ...dbtest.PostgresOption) (*dbtest.PostgresServer, *sql.DB) {
	t.Helper()
	srv := dbtest.Postgres(t, opts...)
	db := srv.DB(t, "app")
	for _, s := range postgresSchema {
		if _, err := db.Exec(s); err != nil {
			t.Fatalf("%s: %v", s, err)
		}
	}
	return srv, db
}

// postgresSource is a PostgreSQL source over database db of srv with its own
// slot.
func postgresSource(t testing.TB, srv *dbtest.PostgresServer, db, slot string, tables []string) *postgres.Source {
	t.Helper()
	src, err := postgres.New(postgres.Config{
		ConnString: postgres.Secret(srv.ConnString(db)), Tables: tables, Slot: slot, StateDir: t.TempDir(),
		HeartbeatInterval: 200 * time.Millisecond, StatusInterval: 200 * time.Millisecond,
		MinBackoff: 20 * time.Millisecond, MaxBackoff: 500 * time.Millisecond,
	}, postgres.WithLogger(warnLogger(t)))
	if err != nil {
		t.Fatal(err)
	}
	return src
}

// TestPostgresStreamEqualsSource: mixed multi-statement transactions over
// three tables (one with a composite key; key-changing updates, REPLICA
// IDENTITY FULL and DEFAULT, unchanged TOASTed values included), written
// while a client streams them from an in-process relay over HTTP. The
// client's copy must equal the tables; windows arrive in SCN order, each
// transaction whole.
func TestPostgresStreamEqualsSource(t *testing.T) {
	srv, db := postgresApp(t)
	r := startSourceRelay(t, postgresSource(t, srv, "app", "e2e_stream", postgresTables), 64<<20)
	m := newRowCopy(t, testDefs("public"))
	runClient(t, []string{relayURL(r)}, m, client.WithStart(checkpoint.Start()))
	if err := newMixWriter(db, postgresDialect, 11).run(context.Background(), 1000); err != nil {
		t.Fatal(err)
	}
	waitCopy(t, readState(t, db, testDefs("public")), m, 30*time.Second)
	m.mu.Lock()
	defer m.mu.Unlock()
	if len(m.scns) < 800 || m.partial == 0 {
		t.Fatalf("%d windows for 1000 transactions, %d updates with unchanged TOASTed columns (want some)", len(m.scns), m.partial)
	}
	t.Logf("%d windows, %d events, %d updates with unchanged TOASTed columns", len(m.scns), m.events, m.partial)
}

// TestPostgresRelayKill9 kills a `databus relay` subprocess capturing
// PostgreSQL mid-stream while writes go on, restarts it, and checks that the
// client resumes without loss, that its copy equals the database, and that
// a second client from the start sees exactly the windows the first saw,
// heartbeat windows included (they are WAL records, read again identically).
// The slot, created by the relay's first Open before any write, keeps
// everything the relay has not released.
func TestPostgresRelayKill9(t *testing.T) {
	srv, db := postgresApp(t)
	p := newSourceRelayProcess(t, fmt.Sprintf(`  postgres:
    connString: %s
    tables: [%s]
    slot: e2e_kill
    heartbeatInterval: 200ms
    statusInterval: 200ms
    minBackoff: 20ms
    maxBackoff: 500ms
`, srv.ConnString("app"), strings.Join(postgresTables, ", ")))
	p.start()
	base := "http://" + p.addr
	m := newRowCopy(t, testDefs("public"))
	store := client.NewFileStore(filepath.Join(t.TempDir(), "cp.json"))
	runClient(t, []string{base}, m, client.WithStart(checkpoint.Start()), client.WithCheckpointStore(store), client.WithEmptyWindows())

	w := newMixWriter(db, postgresDialect, 12)
	ctx := context.Background()
	if err := w.run(ctx, 200); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 20*time.Second, "client to consume windows before the crash", func() bool { return m.windows() >= 20 })
	var werr error
	done := make(chan struct{})
	go func() { defer close(done); werr = w.run(ctx, 600) }() // writes go on across the crash
	time.Sleep(30 * time.Millisecond)
	writing(t, done)
	p.kill()
	time.Sleep(150 * time.Millisecond)
	p.start()
	<-done
	if werr != nil {
		t.Fatal(werr)
	}
	want := readState(t, db, testDefs("public"))
	waitCopy(t, want, m, 40*time.Second)

	_, first := m.snapshot()
	m2 := newRowCopy(t, testDefs("public"))
	runClient(t, []string{base}, m2, client.WithStart(checkpoint.Start()), client.WithEmptyWindows())
	waitCopy(t, want, m2, 40*time.Second)
	waitFor(t, 10*time.Second, "second client to reach the first's last window", func() bool {
		_, s := m2.snapshot()
		return len(s) > 0 && s[len(s)-1] >= first[len(first)-1]
	})
	_, second := m2.snapshot()
	sameWindows(t, first, second)
	t.Logf("%d windows (data and heartbeat)", len(first))
}

// TestPostgresSourceRestart restarts the PostgreSQL server (fast shutdown)
// mid-stream while an in-process relay captures and writes go on (retried
// while the server is down): the copy must equal the tables, windows
// strictly increase (no repeat), and the adapter must have reconnected.
func TestPostgresSourceRestart(t *testing.T) {
	srv, db := postgresApp(t)
	src := postgresSource(t, srv, "app", "e2e_restart", postgresTables)
	r := startSourceRelay(t, src, 64<<20)
	m := newRowCopy(t, testDefs("public"))
	runClient(t, []string{relayURL(r)}, m, client.WithStart(checkpoint.Start()))
	w := newMixWriter(db, postgresDialect, 13)
	ctx := context.Background()
	if err := w.run(ctx, 150); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 20*time.Second, "client to consume windows before the restart", func() bool { return m.windows() >= 20 })
	var (
		failed int
		werr   error
	)
	done := make(chan struct{})
	go func() { defer close(done); failed, werr = w.runThrough(ctx, 600, 30*time.Second) }()
	time.Sleep(50 * time.Millisecond)
	writing(t, done)
	srv.Restart(t)
	<-done
	if werr != nil {
		t.Fatal(werr)
	}
	// A pool used just before the restart may fail once: read with a new one.
	waitCopy(t, readState(t, srv.DB(t, "app"), testDefs("public")), m, 40*time.Second)
	st := src.Stats()
	if st.Reconnects == 0 {
		t.Errorf("the adapter did not reconnect: %+v", st)
	}
	t.Logf("%d windows; %d writes failed while the server restarted; %d reconnections", m.windows(), failed, st.Reconnects)
}
