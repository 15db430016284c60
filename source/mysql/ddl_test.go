package mysql

import (
	"encoding/json"
	"fmt"
	"sort"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/databus-go/databus/event"
	"github.com/databus-go/databus/internal/dbtest"
)

// TestDDLHistory changes a table's definition between writes, then starts
// the adapter from before the first write: every event decodes with the
// definition in force when it was written, and schema changes come where
// the DDL was.
func TestDDLHistory(t *testing.T) {
	srv := dbtest.SharedMariaDB(t)
	dropDatabases(t, srv, "ddl")
	srv.Exec(t, "CREATE DATABASE ddl CHARACTER SET utf8mb4", "CREATE TABLE ddl.t (id INT PRIMARY KEY, a VARCHAR(10), b INT)")
	db := srv.DB(t, "ddl")
	cfg := testConfig(t, srv, "ddl")
	from := binlogEnd(t, db)
	srv.Exec(t,
		"INSERT INTO ddl.t VALUES (1, 'x', 10)",
		"ALTER TABLE ddl.t ADD COLUMN c DATETIME(3) NULL",
		"INSERT INTO ddl.t VALUES (2, 'y', 20, '2024-01-01 00:00:00.5')",
		"ALTER TABLE ddl.t DROP COLUMN a",
		"BEGIN", "INSERT INTO ddl.t VALUES (3, 30, NULL)", "UPDATE ddl.t SET b = 11 WHERE id = 1", "COMMIT",
		"ALTER TABLE ddl.t MODIFY b BIGINT UNSIGNED",
		"INSERT INTO ddl.t VALUES (4, 18446744073709551615, NULL)",
		// Reorder the columns through a new table.
		"CREATE TABLE ddl.t2 (c DATETIME(3), b BIGINT UNSIGNED, id INT PRIMARY KEY)",
		"INSERT INTO ddl.t2 SELECT c, b, id FROM ddl.t WHERE id < 3",
		"DROP TABLE ddl.t",
		"RENAME TABLE ddl.t2 TO ddl.t",
		"INSERT INTO ddl.t (c, b, id) VALUES (NULL, 5, 5)",
		"RENAME TABLE ddl.t TO ddl.t3",
		"INSERT INTO ddl.t3 (id, b) VALUES (6, 6)",
		"TRUNCATE TABLE ddl.t3",
		"INSERT INTO ddl.t3 (id, b) VALUES (7, 7)",
		"ALTER TABLE ddl.t3 ADD COLUMN z INT DEFAULT 9",
		"INSERT INTO ddl.t3 (id, b) VALUES (8, 8)",
	)
	// Open only now: the catalog has the final definition of ddl.t3, and no
	// ddl.t. Events must still decode with the log's definitions.
	s, tables := openSource(t, cfg)
	srv.Exec(t,
		// CREATE ... SELECT is one transaction with rows.
		"CREATE TABLE ddl.cs SELECT id, b FROM ddl.t3",
		"DROP DATABASE ddl")
	ws := collect(t, s, db, from)
	checkWindows(t, ws)
	reg := newRegistry(t, tables)

	var got [][]string // per non-empty window, what it carries
	state := map[string]map[string]string{}
	for _, w := range ws {
		var items []string
		for i := range w.Events {
			e := &w.Events[i]
			reg.observe(w, e)
			switch e.Kind {
			case event.KindSchemaChange:
				c := reg.changes[len(reg.changes)-1]
				item := fmt.Sprintf("schema %s %s", c.Name, fieldNames(t, c.Avro))
				switch {
				case c.Truncate:
					item = "truncate " + c.Name
					state[c.Name] = nil
				case c.Drop:
					item = "drop " + c.Name
					state[c.Name] = nil
				case c.RenamedTo != "":
					item = "rename " + c.Name + " to " + c.RenamedTo
				case c.RenamedFrom != "":
					item += " from " + c.RenamedFrom
				case c.DDL != "":
					item = c.DDL + " " + c.Name
				}
				items = append(items, item)
			case event.KindData:
				row, before := reg.decode(e)
				name := reg.name(e.Source)
				k := keyString(t, e.Key)
				if state[name] == nil {
					state[name] = map[string]string{}
				}
				switch e.Op {
				case event.OpDelete:
					items = append(items, fmt.Sprintf("delete %s %v", name, rowString(before)))
					delete(state[name], k)
				case event.OpUpdate:
					items = append(items, fmt.Sprintf("update %s %v <- %v", name, rowString(row), rowString(before)))
					state[name][k] = rowString(row)
				default:
					items = append(items, fmt.Sprintf("insert %s %v", name, rowString(row)))
					state[name][k] = rowString(row)
				}
			}
		}
		if len(items) > 0 {
			got = append(got, items)
		}
	}
	const big = "18446744073709551615/1"
	want := [][]string{
		{"schema ddl.t [id a b]", "insert ddl.t a=x b=10 id=1"},
		{"alter ddl.t"},
		{"schema ddl.t [id a b c]", "insert ddl.t a=y b=20 c=2024-01-01T00:00:00.5Z id=2"},
		{"alter ddl.t"},
		{"schema ddl.t [id b c]", "insert ddl.t b=30 c=<nil> id=3", "update ddl.t b=11 c=<nil> id=1 <- b=10 c=<nil> id=1"},
		{"alter ddl.t"},
		{"schema ddl.t [id b c]", "insert ddl.t b=" + big + " c=<nil> id=4"},
		{"schema ddl.t2 [c b id]", "insert ddl.t2 b=11/1 c=<nil> id=1", "insert ddl.t2 b=20/1 c=2024-01-01T00:00:00.5Z id=2"},
		{"drop ddl.t"},
		{"rename ddl.t2 to ddl.t", "schema ddl.t [c b id] from ddl.t2"},
		{"insert ddl.t b=5/1 c=<nil> id=5"},
		{"rename ddl.t to ddl.t3", "schema ddl.t3 [c b id] from ddl.t"},
		{"insert ddl.t3 b=6/1 c=<nil> id=6"},
		{"truncate ddl.t3"},
		{"insert ddl.t3 b=7/1 c=<nil> id=7"},
		{"alter ddl.t3"},
		{"schema ddl.t3 [c b id z]", "insert ddl.t3 b=8/1 c=<nil> id=8 z=9"},
		{"schema ddl.cs [id b]", "insert ddl.cs b=7/1 id=7", "insert ddl.cs b=8/1 id=8"},
		{"drop ddl.cs", "drop ddl.t", "drop ddl.t2", "drop ddl.t3"}, // every table known in ddl
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Fatalf("windows (-want +got):\n%s", diff)
	}
	// The truncate and the drops leave the consumer with no rows.
	for name, rows := range state {
		if len(rows) != 0 {
			t.Errorf("%s still has rows %v", name, rows)
		}
	}
	// The final definition of ddl.t3 is the one Open read from the catalog.
	var t3 uint16
	for _, tb := range tables {
		if tb.Name == "ddl.t3" {
			t3 = tb.Version
		}
	}
	for _, c := range reg.changes {
		if c.Name == "ddl.t3" && c.DDL == "" && len(fieldNames(t, c.Avro)) == 4 && c.Version != t3 {
			t.Fatalf("ddl.t3 [c b id z] is v%d in the log, v%d from Open", c.Version, t3)
		}
	}
}

func fieldNames(t testing.TB, avro []byte) []string {
	var rec struct {
		Fields []struct {
			Name string `json:"name"`
		} `json:"fields"`
	}
	if err := json.Unmarshal(avro, &rec); err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, f := range rec.Fields {
		out = append(out, f.Name)
	}
	return out
}

// rowString renders a decoded row compactly, columns sorted.
func rowString(row map[string]any) string {
	keys := make([]string, 0, len(row))
	for k := range row {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var b strings.Builder
	for i, k := range keys {
		if i > 0 {
			b.WriteByte(' ')
		}
		v := row[k]
		if tm, ok := v.(interface{ Format(string) string }); ok {
			v = tm.Format("2006-01-02T15:04:05.999999Z07:00")
		}
		fmt.Fprintf(&b, "%s=%v", k, v)
	}
	return b.String()
}

func TestParseDDL(t *testing.T) {
	for _, tc := range []struct {
		q    string
		want []ddlOp
	}{
		{"CREATE TABLE t (id INT)", []ddlOp{{kind: ddlCreate, db: "d", table: "t"}}},
		{"create or replace table if not exists `x`.`a``b` (id int)", []ddlOp{{kind: ddlCreate, db: "x", table: "a`b"}}},
		{"CREATE TEMPORARY TABLE t (id INT)", nil},
		{"CREATE UNIQUE INDEX i ON s.t (a)", []ddlOp{{kind: ddlAlter, db: "s", table: "t"}}},
		{"/* hi */ ALTER TABLE t ADD COLUMN c INT, RENAME COLUMN a TO b", []ddlOp{{kind: ddlAlter, db: "d", table: "t"}}},
		{"ALTER ONLINE TABLE t ADD INDEX (a), RENAME TO e.u", []ddlOp{{kind: ddlAlter, db: "d", table: "t"}, {kind: ddlRename, db: "d", table: "t", toDB: "e", to: "u"}}},
		{"ALTER TABLE t CHANGE a b VARCHAR(10) DEFAULT 'rename to x'", []ddlOp{{kind: ddlAlter, db: "d", table: "t"}}},
		{"RENAME TABLE a TO b, c.d TO `e`.f", []ddlOp{{kind: ddlRename, db: "d", table: "a", toDB: "d", to: "b"}, {kind: ddlRename, db: "c", table: "d", toDB: "e", to: "f"}}},
		{"TRUNCATE t", []ddlOp{{kind: ddlTruncate, db: "d", table: "t"}}},
		{"truncate table `s`.`t`", []ddlOp{{kind: ddlTruncate, db: "s", table: "t"}}},
		{"DROP TABLE IF EXISTS `s`.`t`, u /* generated by server */", []ddlOp{{kind: ddlDrop, db: "s", table: "t"}, {kind: ddlDrop, db: "d", table: "u"}}},
		{"DROP TEMPORARY TABLE t", nil},
		{"DROP INDEX i ON t", []ddlOp{{kind: ddlAlter, db: "d", table: "t"}}},
		{"DROP DATABASE IF EXISTS s", []ddlOp{{kind: ddlDrop, db: "s", dropDB: true}}},
		{"/*!40000 ALTER TABLE `t` DISABLE KEYS */", []ddlOp{{kind: ddlAlter, db: "d", table: "t"}}},
		{"GRANT ALL ON *.* TO x", nil},
		{"INSERT INTO t VALUES (1)", nil},
		{"", nil},
	} {
		got := parseDDL("d", tc.q)
		if diff := cmp.Diff(tc.want, got, cmp.AllowUnexported(ddlOp{})); diff != "" {
			t.Errorf("%q (-want +got):\n%s", tc.q, diff)
		}
	}
}

func FuzzParseDDL(f *testing.F) {
	for _, s := range []string{"ALTER TABLE `a`.b RENAME TO c", "DROP TABLE a, b", "RENAME TABLE a TO b, c TO", "/*!1 CREATE TABLE x", "`", "'", "/*"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, q string) {
		for _, op := range parseDDL("d", q) {
			if op.kind < ddlCreate || op.kind > ddlDrop {
				t.Fatalf("bad kind %v", op.kind)
			}
		}
	})
}
