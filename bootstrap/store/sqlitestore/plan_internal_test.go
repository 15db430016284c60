package sqlitestore

import (
	"context"
	"database/sql/driver"
	"path/filepath"
	"strings"
	"testing"

	"github.com/databus-go/databus/bootstrap/store"
	"github.com/databus-go/databus/filter"
)

func named(vs ...any) []driver.NamedValue {
	out := make([]driver.NamedValue, len(vs))
	for i, v := range vs {
		out[i] = driver.NamedValue{Ordinal: i + 1, Value: v}
	}
	return out
}

func explain(t *testing.T, s *Store, query string, args []driver.NamedValue) string {
	t.Helper()
	vs := make([]any, len(args))
	for i, a := range args {
		vs[i] = a.Value
	}
	rows, err := s.r.QueryContext(context.Background(), "EXPLAIN QUERY PLAN "+query, vs...)
	if err != nil {
		t.Fatalf("EXPLAIN %s: %v", query, err)
	}
	defer rows.Close()
	var plan []string
	for rows.Next() {
		var id, parent, notused int
		var detail string
		if err := rows.Scan(&id, &parent, &notused, &detail); err != nil {
			t.Fatal(err)
		}
		plan = append(plan, detail)
	}
	return strings.Join(plan, "; ")
}

// TestQueryPlans checks that every query that pages through a large table
// seeks with an index and never sorts: a plan that scans from the start
// on every page would make a snapshot quadratic.
func TestQueryPlans(t *testing.T) {
	s, err := Open(filepath.Join(t.TempDir(), "s.db"), Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	mod, _ := filter.ParsePartition("mod:1,3/8")
	rng, _ := filter.ParsePartition("range:0-100")
	cursor := &store.Cursor{Source: 1, Key: []byte{1}}
	type query struct {
		sql  string
		args []driver.NamedValue
		want string
	}
	var qs []query
	for _, f := range []*filter.Filter{nil, {Partition: mod}, {Partition: rng}} {
		q, args := snapshotSQL(100, cursor, f)
		qs = append(qs, query{q, args, "SEARCH snapshot USING PRIMARY KEY ((source,key)>(?,?))"})
		q, args = snapshotSQL(100, nil, f)
		qs = append(qs, query{q, args, "SCAN snapshot"})
		q, args = sourceSQL(100, 3, []byte{1}, f)
		qs = append(qs, query{q, args, "SEARCH snapshot USING PRIMARY KEY (source=? AND key>?)"})
		q, args = sourceSQL(100, 3, nil, f)
		qs = append(qs, query{q, args, "SEARCH snapshot USING PRIMARY KEY (source=?)"})
	}
	qs = append(qs,
		query{"DELETE FROM snapshot WHERE deleted = 1 AND ts < ?", named(5), "SEARCH snapshot USING INDEX snapshot_tombstones (ts<?)"},
		query{"SELECT scn, frames FROM log WHERE scn > ? AND scn <= ? ORDER BY scn", named(1, 5), "SEARCH log USING INTEGER PRIMARY KEY (rowid>? AND rowid<?)"},
		query{"SELECT scn FROM log WHERE ts >= ? ORDER BY scn LIMIT 1", named(5), "SCAN log"},
	)
	for _, q := range qs {
		if got := explain(t, s, q.sql, q.args); got != q.want {
			t.Errorf("plan of %s\n  is   %s\n  want %s", q.sql, got, q.want)
		}
	}
}
