package pgstore

import (
	"context"
	"fmt"
	"hash/crc32"
	"os"
	"regexp"
	"strings"
	"sync/atomic"
	"testing"

	"go.uber.org/goleak"

	"github.com/databus-go/databus/internal/dbtest"
)

func TestMain(m *testing.M) {
	code := dbtest.Run(m)
	if code == 0 {
		if err := goleak.Find(); err != nil {
			fmt.Fprintln(os.Stderr, "goleak:", err)
			code = 1
		}
	}
	os.Exit(code)
}

var dbSeq atomic.Uint32

var nonIdent = regexp.MustCompile(`[^a-z0-9]+`)

// freshDB creates an empty database on the shared server for this test
// (dropping what an earlier run with -count left) and returns its
// connection string.
func freshDB(t testing.TB) string {
	t.Helper()
	srv := dbtest.SharedPostgres(t)
	base := nonIdent.ReplaceAllString(strings.ToLower(t.Name()), "_")
	if len(base) > 30 {
		base = base[:30]
	}
	name := fmt.Sprintf("t%s_%08x_%d", base, crc32.ChecksumIEEE([]byte(t.Name())), dbSeq.Add(1))
	srv.Exec(t, "DROP DATABASE IF EXISTS "+name+" WITH (FORCE)")
	srv.DB(t, name) // creates it
	t.Cleanup(func() { srv.Exec(t, "DROP DATABASE IF EXISTS "+name+" WITH (FORCE)") })
	return srv.ConnString(name)
}

// open opens a store and closes it when the test ends.
func open(t testing.TB, connString string, opts Options) *Store {
	t.Helper()
	s, err := Open(context.Background(), connString, opts)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}
