package e2e

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/databus-go/databus/checkpoint"
	"github.com/databus-go/databus/client"
	"github.com/databus-go/databus/source/mysql"
)

// truncateRounds writes rows, truncates a table, writes again: a consumer
// that ignored the TRUNCATE signal keeps the rows written before it, and
// the comparison with the table fails.
func truncateRounds(t *testing.T, exec func(q string, args ...any) error, truncate []string, placeholder func(i int) string) {
	t.Helper()
	insert := fmt.Sprintf("INSERT INTO tag (k1, k2, val, txn) VALUES (%s, %s, %s, %s)", placeholder(1), placeholder(2), placeholder(3), placeholder(4))
	for round := 0; round < 3; round++ {
		for i := 0; i < 20; i++ {
			if err := exec(insert, fmt.Sprintf("r%d", round), i, float64(i)/3, 1000+round*100+i); err != nil {
				t.Fatal(err)
			}
		}
		for _, q := range truncate {
			if err := exec(q); err != nil {
				t.Fatalf("%s: %v", q, err)
			}
		}
	}
	// Rows after the last TRUNCATE, so the final copy is not empty.
	if err := exec(insert, "after", 1, 0.5, 99); err != nil {
		t.Fatal(err)
	}
}

// TestMariaDBTruncateReachesConsumers: TRUNCATE TABLE has no row events in
// the binlog; the consumer must get the signal and drop its rows.
func TestMariaDBTruncateReachesConsumers(t *testing.T) {
	srv, db := mariadbApp(t)
	r := startSourceRelay(t, mariadbSource(t, srv, "app", mysql.StartAtEnd), 64<<20)
	waitStarted(t, r)
	m := newRowCopy(t, testDefs("app"))
	runClient(t, []string{relayURL(r)}, m, client.WithStart(checkpoint.Start()))
	exec := func(q string, args ...any) error { _, err := db.Exec(q, args...); return err }
	truncateRounds(t, exec, []string{"TRUNCATE TABLE tag"}, func(int) string { return "?" })
	waitCopy(t, readState(t, db, testDefs("app")), m, 30*time.Second)
}

// TestPostgresTruncateReachesConsumers: TRUNCATE inside a transaction
// between inserts; the consumer must apply it at its place in the window.
func TestPostgresTruncateReachesConsumers(t *testing.T) {
	srv, db := postgresApp(t)
	r := startSourceRelay(t, postgresSource(t, srv, "app", "e2e_truncate", postgresTables), 64<<20)
	m := newRowCopy(t, testDefs("public"))
	runClient(t, []string{relayURL(r)}, m, client.WithStart(checkpoint.Start()))
	exec := func(q string, args ...any) error { _, err := db.Exec(q, args...); return err }
	truncateRounds(t, exec, []string{"TRUNCATE tag"}, func(i int) string { return fmt.Sprintf("$%d", i) })
	// One transaction: rows, TRUNCATE, rows. Only the last rows survive.
	tx, err := db.BeginTx(context.Background(), nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, q := range []string{
		"INSERT INTO tag (k1, k2, val, txn) VALUES ('in-tx', 1, 1, 100)",
		"TRUNCATE tag",
		"INSERT INTO tag (k1, k2, val, txn) VALUES ('in-tx', 2, 2, 100)",
	} {
		if _, err := tx.Exec(q); err != nil {
			t.Fatalf("%s: %v", q, err)
		}
	}
	if err := tx.Commit(); err != nil {
		t.Fatal(err)
	}
	waitCopy(t, readState(t, db, testDefs("public")), m, 30*time.Second)
}
