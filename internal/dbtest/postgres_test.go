package dbtest_test

import (
	"context"
	"database/sql"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/jackc/pgx/v5"

	"github.com/databus-go/databus/internal/dbtest"
)

func pgShow(t *testing.T, db *sql.DB, name string) string {
	t.Helper()
	var v string
	if err := db.QueryRow("SHOW " + name).Scan(&v); err != nil {
		t.Fatalf("SHOW %s: %v", name, err)
	}
	return v
}

func TestPostgres(t *testing.T) {
	start := time.Now()
	s := dbtest.Postgres(t)
	t.Logf("PostgreSQL ready in %v on port %d, dir %s", time.Since(start), s.Port, s.Dir)

	db := s.DB(t, "")
	for name, want := range map[string]string{
		"wal_level": "logical", "max_replication_slots": "10", "max_wal_senders": "10",
		"fsync": "off", "full_page_writes": "off", "synchronous_commit": "on",
	} {
		if got := pgShow(t, db, name); got != want {
			t.Errorf("%s = %q, want %q", name, got, want)
		}
	}

	s.Exec(t, "CREATE TABLE items (id int PRIMARY KEY, note text); INSERT INTO items VALUES (1, 'a')")

	t.Run("ReplicationRole", func(t *testing.T) {
		s.Exec(t, "CREATE ROLE cdc WITH REPLICATION LOGIN PASSWORD 'secret'", "GRANT SELECT ON items TO cdc")
		ctx := context.Background()
		conn, err := pgx.Connect(ctx, s.UserConnString("cdc", "secret", "")+"&replication=database")
		if err != nil {
			t.Fatalf("replication connection as cdc: %v", err)
		}
		defer conn.Close(ctx)
		// IDENTIFY_SYSTEM only works on a replication connection.
		res, err := conn.PgConn().Exec(ctx, "IDENTIFY_SYSTEM").ReadAll()
		if err != nil || len(res) != 1 || len(res[0].Rows) != 1 {
			t.Fatalf("IDENTIFY_SYSTEM as cdc: %v, %v", res, err)
		}
	})

	t.Run("RestartKeepsData", func(t *testing.T) {
		start := time.Now()
		s.Restart(t)
		t.Logf("clean restart took %v", time.Since(start))
		var note string
		if err := s.DB(t, "").QueryRow("SELECT note FROM items WHERE id = 1").Scan(&note); err != nil || note != "a" {
			t.Fatalf("after Restart = %q, %v; want a", note, err)
		}
	})

	t.Run("KillAndStartKeepsData", func(t *testing.T) {
		s.Exec(t, "INSERT INTO items VALUES (2, 'b')")
		s.Kill(t)
		start := time.Now()
		s.Start(t)
		t.Logf("restart after SIGKILL (crash recovery) took %v", time.Since(start))
		var n int
		if err := s.DB(t, "").QueryRow("SELECT count(*) FROM items").Scan(&n); err != nil || n != 2 {
			t.Fatalf("rows after Kill+Start = %d, %v; want 2", n, err)
		}
	})
}

// TestPostgresDB covers the database/sql driver behind PostgresServer.DB,
// and PostgresSettings.
func TestPostgresDB(t *testing.T) {
	s := dbtest.Postgres(t, dbtest.PostgresSettings("synchronous_commit=off", "work_mem=8MB"))
	db := s.DB(t, "app")
	if got := pgShow(t, db, "synchronous_commit"); got != "off" {
		t.Errorf("synchronous_commit = %q, want off (PostgresSettings)", got)
	}
	if got := pgShow(t, db, "work_mem"); got != "8MB" {
		t.Errorf("work_mem = %q, want 8MB", got)
	}
	if got := pgShow(t, db, "wal_level"); got != "logical" {
		t.Errorf("wal_level = %q, want logical", got)
	}
	var name string
	if err := db.QueryRow("SELECT current_database()").Scan(&name); err != nil || name != "app" {
		t.Fatalf("current_database() = %q, %v", name, err)
	}
	if s.DB(t, "app") == nil { // a second call finds it exists
		t.Fatal("nil pool")
	}

	if _, err := db.Exec("CREATE TABLE t (id bigint PRIMARY KEY, n int, f float8, b bool, bs bytea, ts timestamptz, num numeric, txt text, j jsonb)"); err != nil {
		t.Fatal(err)
	}
	ts := time.Date(2024, 5, 6, 7, 8, 9, 123456000, time.UTC)
	res, err := db.Exec("INSERT INTO t VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9), (2, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL)",
		int64(1), 42, 1.5, true, []byte{0, 1, 255}, ts, "12.340", "héllo", `{"k": [1, 2]}`)
	if err != nil {
		t.Fatal(err)
	}
	if n, _ := res.RowsAffected(); n != 2 {
		t.Errorf("RowsAffected = %d, want 2", n)
	}

	type row struct {
		ID  int64
		N   sql.NullInt64
		F   sql.NullFloat64
		B   sql.NullBool
		BS  []byte
		TS  sql.NullTime
		Num sql.NullString
		Txt sql.NullString
		J   sql.NullString
	}
	rows, err := db.Query("SELECT id, n, f, b, bs, ts, num, txt, j FROM t ORDER BY id")
	if err != nil {
		t.Fatal(err)
	}
	var got []row
	for rows.Next() {
		var r row
		if err := rows.Scan(&r.ID, &r.N, &r.F, &r.B, &r.BS, &r.TS, &r.Num, &r.Txt, &r.J); err != nil {
			t.Fatal(err)
		}
		r.TS.Time = r.TS.Time.UTC()
		got = append(got, r)
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	rows.Close()
	want := []row{
		{1, sql.NullInt64{Int64: 42, Valid: true}, sql.NullFloat64{Float64: 1.5, Valid: true}, sql.NullBool{Bool: true, Valid: true},
			[]byte{0, 1, 255}, sql.NullTime{Time: ts, Valid: true}, sql.NullString{String: "12.340", Valid: true},
			sql.NullString{String: "héllo", Valid: true}, sql.NullString{String: `{"k": [1, 2]}`, Valid: true}},
		{ID: 2},
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("rows (-want +got):\n%s", diff)
	}

	// Transactions: a rollback leaves nothing, a commit keeps its row.
	for _, commit := range []bool{false, true} {
		tx, err := db.Begin()
		if err != nil {
			t.Fatal(err)
		}
		if _, err := tx.Exec("INSERT INTO t (id) VALUES (3)"); err != nil {
			t.Fatal(err)
		}
		if commit {
			err = tx.Commit()
		} else {
			err = tx.Rollback()
		}
		if err != nil {
			t.Fatal(err)
		}
		var n int
		if err := db.QueryRow("SELECT count(*) FROM t WHERE id = 3").Scan(&n); err != nil {
			t.Fatal(err)
		}
		if want := map[bool]int{false: 0, true: 1}[commit]; n != want {
			t.Errorf("commit=%v: %d rows, want %d", commit, n, want)
		}
	}
	// A prepared statement reused with several arguments.
	stmt, err := db.Prepare("SELECT $1::int + 1")
	if err != nil {
		t.Fatal(err)
	}
	defer stmt.Close()
	for i := range 3 {
		var n int
		if err := stmt.QueryRow(i).Scan(&n); err != nil || n != i+1 {
			t.Fatalf("prepared: %d, %v; want %d", n, err, i+1)
		}
	}
	// A server error reaches the caller.
	if _, err := db.Exec("INSERT INTO t (id) VALUES (1)"); err == nil {
		t.Error("duplicate key accepted")
	}
}

func TestSharedPostgres(t *testing.T) {
	s := dbtest.SharedPostgres(t)
	if s2 := dbtest.SharedPostgres(t); s2 != s {
		t.Fatal("SharedPostgres returned two servers")
	}
	var name string
	if err := s.DB(t, "shared_test").QueryRow("SELECT current_database()").Scan(&name); err != nil || name != "shared_test" {
		t.Fatalf("current_database() = %q, %v", name, err)
	}
}
