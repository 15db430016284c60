package postgres

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
	"github.com/jackc/pgx/v5"

	"github.com/databus-go/databus/event"
	"github.com/databus-go/databus/internal/dbtest"
	"github.com/databus-go/databus/schema"
	"github.com/databus-go/databus/source"
)

// newReader builds a ChunkReader for cfg, closed when the test ends.
func newReader(t testing.TB, cfg Config) *ChunkReader {
	t.Helper()
	r, err := NewChunkReader(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Close() })
	return r
}

func testCtx(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	t.Cleanup(cancel)
	return ctx
}

// readAll pages through tb with limit-row chunks and returns every row and
// the cursor after each chunk. It checks that every chunk but the last is
// full.
func readAll(t testing.TB, r *ChunkReader, tb schema.Table, limit int) ([]event.Event, []string) {
	t.Helper()
	ctx := testCtx(t)
	var rows []event.Event
	var cursors []string
	cursor := ""
	for {
		chunk, next, err := r.ReadChunk(ctx, tb, cursor, limit)
		if err != nil {
			t.Fatalf("ReadChunk(%s, %q): %v", tb.Name, cursor, err)
		}
		if len(chunk) > limit {
			t.Fatalf("ReadChunk returned %d rows for limit %d", len(chunk), limit)
		}
		if len(chunk) == 0 && next != cursor {
			t.Fatalf("empty chunk moved the cursor from %q to %q", cursor, next)
		}
		rows = append(rows, chunk...)
		cursors = append(cursors, next)
		cursor = next
		if len(chunk) < limit {
			return rows, cursors
		}
	}
}

// tableNamed returns the table of tables called name.
func tableNamed(t testing.TB, tables []schema.Table, name string) schema.Table {
	t.Helper()
	for _, tb := range tables {
		if tb.Name == name {
			return tb
		}
	}
	t.Fatalf("no table %s among %d", name, len(tables))
	return schema.Table{}
}

// seedExtraColumns are columns the key test adds to TestTypes' table.
var seedExtraColumns = []struct{ name, sqlType string }{
	{"c_num_5_0", "numeric(5,0)"},
	{"c_num_38_10", "numeric(38,10)"},
	{"c_varbit", "bit varying(16)"},
	{"c_int8_arr", "bigint[]"},
	{"c_float4_arr", "real[]"},
	{"c_float8_arr", "double precision[]"},
	{"c_jsonb_arr", "jsonb[]"},
	{"c_date_arr", "date[]"},
	{"c_ts_arr", "timestamp[]"},
	{"c_uuid_arr", "uuid[]"},
	{"c_interval_arr", "interval[]"},
	{"c_bool_arr", "boolean[]"},
	{"c_time_arr", "time(3)[]"},
	{"c_tstz3", "timestamptz(3)"},
	{"c_toast", "text"},
	{"c_toast_bytea", "bytea"},
}

// TestSeedMatchesCapture is the seed's central promise: rows of every type
// the adapter supports (extremes, NaN, infinities, NULLs, empty values,
// arrays, enums, domains, values TOASTed out of line), in a table keyed by
// its primary key, one keyed by a replica identity index whose order
// differs from the columns', and one with a composite key of awkward types,
// come out of ReadChunk as exactly the bytes (Key and Payload) the capture
// produced for their INSERTs, with the stream's schema version, read in
// small chunks whose cursors must round-trip every key value exactly.
func TestSeedMatchesCapture(t *testing.T) {
	t.Parallel()
	srv := dbtest.SharedPostgres(t)
	e := newEnv(t, srv, "public.types", "public.ident", "public.keys", "public.incl")
	var cols []string
	for _, c := range typeColumns {
		cols = append(cols, c.name+" "+c.sqlType)
	}
	for _, c := range seedExtraColumns {
		cols = append(cols, c.name+" "+c.sqlType)
	}
	e.exec(t,
		"CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy')",
		"CREATE DOMAIN posint AS integer CHECK (VALUE > 0)",
		"CREATE TABLE types (id int PRIMARY KEY, "+strings.Join(cols, ", ")+")",
		"ALTER TABLE types ALTER COLUMN c_toast SET STORAGE EXTERNAL, ALTER COLUMN c_toast_bytea SET STORAGE EXTERNAL",
		"CREATE TABLE ident (a int NOT NULL, b text NOT NULL, c jsonb, d mood[], UNIQUE (b, a))",
		"ALTER TABLE ident REPLICA IDENTITY USING INDEX ident_b_a_key",
		`CREATE TABLE keys (k_text text, k_ts timestamptz, k_num numeric, k_bytes bytea, k_uuid uuid,
			k_dbl double precision, k_date date, v int, PRIMARY KEY (k_text, k_ts, k_num, k_bytes, k_uuid, k_dbl, k_date))`,
		// INCLUDE columns are not part of the key.
		"CREATE TABLE incl (x text, id int, PRIMARY KEY (id) INCLUDE (x))",
	)
	s, tables := open(t, e.cfg)

	ins := func(id int, vals map[string]string) {
		names, lits := []string{"id"}, []string{strconv.Itoa(id)}
		for k, v := range vals {
			names, lits = append(names, k), append(lits, v)
		}
		e.exec(t, "INSERT INTO types ("+strings.Join(names, ", ")+") VALUES ("+strings.Join(lits, ", ")+")")
	}
	// TestTypes' rows.
	ins(1, map[string]string{
		"c_int2": "12", "c_int4": "-7", "c_int8": "9000000000",
		"c_num": "'12345678901234567890.123456789'", "c_num_ps": "3.1", "c_real": "1.5", "c_dbl": "0.1",
		"c_bool": "true", "c_text": `'héllo "q" 🙂'`, "c_varchar": "'abc'", "c_char": "'ab'", "c_bytea": `'\x00ff10'`,
		"c_date": "'2024-02-29'", "c_time": "'13:45:56.123456'", "c_timetz": "'13:45:56+02'",
		"c_ts": "'2024-02-29 13:45:56.5'", "c_tstz": "'2024-02-29 13:45:56.5+02'",
		"c_interval": "'1 year 2 mons 3 days 04:05:06.5'", "c_uuid": "'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11'",
		"c_json": `'{"a": [1, 2]}'`, "c_jsonb": `'{"b": 1, "a": [1, 2]}'`,
		"c_int_arr": "'{1,NULL,3}'", "c_text_arr": `ARRAY['a b', '', NULL, 'NULL', 'x,y', 'q"z', 'back\slash', '{}']`,
		"c_mood": "'happy'", "c_mood_arr": "'{sad,happy}'", "c_inet": "'192.168.0.1/24'", "c_cidr": "'10.0.0.0/8'",
		"c_mac": "'08:00:2b:01:02:03'", "c_dom": "5", "c_2d": "'{{1,2},{3,4}}'",
		"c_tstz_arr": `'{"2024-01-01 00:00:00+00",infinity,NULL}'`, "c_bytea_arr": `ARRAY['\x01'::bytea, NULL, '']`,
		"c_num_arr": "'{1.5,NaN,-Infinity}'", "c_point": "'(1,2)'", "c_money": "12.34",
		"c_box_arr": "ARRAY['((0,0),(1,1))'::box, '((1,1),(2,2))']", "c_dom_arr": "'{1,2}'", "c_bpchar": "'x'",
	})
	ins(2, map[string]string{
		"c_int2": "-32768", "c_int4": "-2147483648", "c_int8": "-9223372036854775808",
		"c_num": "'-Infinity'", "c_num_ps": "'NaN'", "c_real": "'-Infinity'", "c_dbl": "'-Infinity'",
		"c_bool": "false", "c_text": "''", "c_date": "'4713-01-01 BC'", "c_time": "'00:00:00'",
		"c_ts": "'4713-01-01 00:00:00 BC'", "c_tstz": "'4713-01-01 00:00:00+00 BC'", "c_interval": "'-1 days -00:00:01'",
		"c_int_arr": "'{}'", "c_bytea": "''", "c_jsonb": "'[]'", "c_2d": "'[0:1]={7,8}'",
	})
	ins(3, map[string]string{
		"c_int2": "32767", "c_int4": "2147483647", "c_int8": "9223372036854775807",
		"c_num": "'Infinity'", "c_num_ps": "99999999.99", "c_real": "3.4028235e38", "c_dbl": "1.7976931348623157e308",
		"c_date": "'5874897-12-31'", "c_time": "'24:00:00'",
		"c_ts": "'294276-12-31 23:59:59.999999'", "c_tstz": "'294276-12-31 23:59:59.999999+00'",
		"c_text": "repeat('x', 100000)",
	})
	ins(4, map[string]string{
		"c_real": "'NaN'", "c_dbl": "'NaN'", "c_num": "'NaN'", "c_date": "'infinity'",
		"c_ts": "'infinity'", "c_tstz": "'-infinity'",
	})
	ins(5, nil) // NULLs
	ins(6, map[string]string{
		"c_real": "1.17549435e-38", "c_dbl": "4.9e-324", "c_date": "'-infinity'", "c_ts": "'-infinity'",
		"c_tstz": "'1969-12-31 23:59:59.999999+00'", "c_time": "'23:59:59.999999'", "c_num": "'-0.000000000000000000001'",
	})
	// The added columns, and values stored out of line.
	ins(7, map[string]string{
		"c_real": "'-0'", "c_dbl": "'-0'",
		"c_num_5_0": "12345", "c_num_38_10": "'-1234567890123456789012345678.0123456789'", "c_varbit": "B'1011'",
		"c_int8_arr": "'{1,-9223372036854775808,NULL}'", "c_float4_arr": "'{NaN,Infinity,-Infinity,1.5,-0}'",
		"c_float8_arr": "'{0.1,1e-300,NULL,-0}'", "c_jsonb_arr": `ARRAY['{"a":1}'::jsonb, '[]', NULL]`,
		"c_date_arr": "'{2024-02-29,infinity,-infinity}'", "c_ts_arr": `'{"2000-01-01 00:00:00.000001",infinity}'`,
		"c_uuid_arr": "'{a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11,NULL}'", "c_interval_arr": `'{"1 day","-2 hours"}'`,
		"c_bool_arr": "'{t,f,NULL}'", "c_time_arr": "'{12:00:00.123,24:00:00}'", "c_tstz3": "'2024-01-01 12:00:00.123+05:30'",
		"c_toast":       "(SELECT string_agg(md5(i::text), '') FROM generate_series(1, 3000) i)",
		"c_toast_bytea": "(SELECT decode(string_agg(md5(i::text), ''), 'hex') FROM generate_series(1, 3000) i)",
	})
	ins(8, map[string]string{"c_toast": "(SELECT string_agg(md5((i * 7)::text), ' ') FROM generate_series(1, 5000) i)"})
	e.exec(t, `INSERT INTO types (id, c_int4, c_text, c_num, c_dbl, c_tstz, c_jsonb, c_int_arr, c_bytea, c_mood)
		SELECT g, g * 7, 'row ' || g, g / 7.0, g / 3.0, '2024-01-01'::timestamptz + g * interval '1 hour 1.5 second',
			jsonb_build_object('g', g), ARRAY[g, NULL, -g], decode(md5(g::text), 'hex'), (ARRAY['sad','ok','happy'])[g % 3 + 1]::mood
		FROM generate_series(9, 58) g`)
	// The TOASTed values really are out of line.
	var toasted int
	if err := e.db.QueryRow(`SELECT count(*) FROM types WHERE pg_column_size(c_toast) > 8000`).Scan(&toasted); err != nil || toasted != 2 {
		t.Fatalf("%d large values (err %v)", toasted, err)
	}
	var toastRel string
	if err := e.db.QueryRow(`SELECT reltoastrelid::regclass::text FROM pg_class WHERE oid = 'types'::regclass`).Scan(&toastRel); err != nil {
		t.Fatal(err)
	}
	var chunks int
	if err := e.db.QueryRow(`SELECT count(*) FROM ` + toastRel).Scan(&chunks); err != nil || chunks == 0 {
		t.Fatalf("%d TOAST chunks (err %v)", chunks, err)
	}

	e.exec(t, `INSERT INTO ident SELECT g % 5, (ARRAY['b', 'é', 'a"q', '', 'Zz'])[g % 5 + 1] || (g / 5)::text,
		jsonb_build_object('g', g), ARRAY['ok', NULL]::mood[] FROM generate_series(0, 22) g`)
	e.exec(t, `INSERT INTO keys SELECT t, ts, n, b, u, d, dt, row_number() OVER ()
		FROM unnest(ARRAY['', 'a"b,c', 'ü{}', 'A']) t,
			unnest(ARRAY['-infinity', '2024-01-01 00:00:00.123456+00', 'infinity']::timestamptz[]) ts,
			unnest(ARRAY['NaN', '-1.50', '1e-20']::numeric[]) n,
			unnest(ARRAY['\x', '\x00ff']::bytea[]) b,
			unnest(ARRAY['00000000-0000-0000-0000-000000000000']::uuid[]) u,
			unnest(ARRAY['NaN', '-Infinity', '0.1', '1e-300']::float8[]) d,
			unnest(ARRAY['-infinity', '2000-02-29']::date[]) dt
		WHERE hashtext(t || ts::text || n::text || encode(b, 'hex') || d::text || dt::text) % 6 = 0`)

	e.exec(t, "INSERT INTO incl SELECT 'x' || g, g FROM generate_series(1, 5) g")
	if k := tableNamed(t, tables, "public.incl").Key; !slices.Equal(k, []string{"id"}) {
		t.Fatalf("incl's key %v", k)
	}

	ws := captureUntilMark(t, e, s, source.Position{})
	reg := newRegistry(t, nil)
	captured := map[string]event.Event{} // source/key → the capture's insert
	counts := map[uint32]int{}
	for _, w := range ws {
		for i := range w.Events {
			ev := &w.Events[i]
			reg.observe(w, ev)
			if ev.Kind != event.KindData {
				continue
			}
			if ev.Op != event.OpInsert {
				t.Fatalf("captured %v", ev.Op)
			}
			captured[fmt.Sprint(ev.Source)+"/"+string(ev.Key)] = *ev
			counts[ev.Source]++
		}
	}
	versions := map[string]schema.Table{}
	for _, sc := range reg.changes {
		tb, err := schema.FromChange(sc)
		if err != nil {
			t.Fatal(err)
		}
		versions[tb.Name] = tb
	}

	r := newReader(t, e.cfg)
	for _, c := range []struct {
		name  string
		limit int
		rows  int
	}{{"public.types", 4, 58}, {"public.ident", 3, 23}, {"public.keys", 1, 0}, {"public.incl", 2, 5}} {
		tb, ok := versions[c.name]
		if !ok {
			t.Fatalf("the stream announced no version of %s", c.name)
		}
		if o := tableNamed(t, tables, c.name); !sameDefinition(&o, &tb) {
			t.Fatalf("Open's %s differs from the stream's:\n%+v\n%+v", c.name, o, tb)
		}
		rows, cursors := readAll(t, r, tb, c.limit)
		if c.rows != 0 && len(rows) != c.rows || len(rows) != counts[tb.ID] {
			t.Fatalf("%s: read %d rows, captured %d", c.name, len(rows), counts[tb.ID])
		}
		if c.name == "public.keys" && len(rows) < 20 {
			t.Fatalf("only %d rows in keys", len(rows))
		}
		seen := map[string]bool{}
		for i, ev := range rows {
			if ev.Kind != event.KindData || ev.Op != event.OpInsert || ev.Source != tb.ID || ev.SchemaVersion != tb.Version ||
				ev.SCN != 0 || ev.Timestamp != 0 || ev.HasBefore || ev.Before != nil {
				t.Fatalf("%s row %d: %+v", c.name, i, ev)
			}
			k := fmt.Sprint(ev.Source) + "/" + string(ev.Key)
			if seen[k] {
				t.Fatalf("%s: key %s read twice", c.name, keyString(t, ev.Key))
			}
			seen[k] = true
			want, ok := captured[k]
			if !ok {
				t.Fatalf("%s row %d: key %s (%x) was not captured", c.name, i, keyString(t, ev.Key), ev.Key)
			}
			if !bytes.Equal(ev.Payload, want.Payload) {
				got, _ := reg.decode(&ev)
				exp, _ := reg.decode(&want)
				t.Fatalf("%s key %s: payload differs from the capture's (-capture +seed):\n%s\ncapture %x\nseed    %x",
					c.name, keyString(t, ev.Key), cmp.Diff(exp, got, cmpopts.EquateNaNs()), want.Payload, ev.Payload)
			}
		}
		if c.name == "public.types" {
			// In key order.
			for i, ev := range rows {
				if k := keyString(t, ev.Key); k != strconv.Itoa(i+1) {
					t.Fatalf("row %d has key %s", i, k)
				}
			}
			if !strings.Contains(cursors[0], `"key":["id"],"after":["4"]`) {
				t.Fatalf("first cursor %s", cursors[0])
			}
		}
	}
}

// TestSeedPagination pages through a table with a composite (int, text)
// key whose index orders its columns unlike the table, and one with a
// bigint key including its extremes, in small chunks, while rows are
// inserted and deleted between chunks. Every row visited is visited once,
// in the index's order; every row that existed throughout is visited; rows
// inserted ahead of the cursor are visited, rows behind it are not, and
// rows deleted ahead of it are not. Each statement is an index scan.
func TestSeedPagination(t *testing.T) {
	t.Parallel()
	srv := dbtest.SharedPostgres(t)
	e := newEnv(t, srv, "public.comp", "public.big")
	e.exec(t,
		"CREATE TABLE comp (txt text NOT NULL, n int NOT NULL, v text, PRIMARY KEY (n, txt))",
		"CREATE TABLE big (id bigint PRIMARY KEY, v text)",
		`INSERT INTO comp SELECT t, n, 'v' FROM generate_series(0, 39) n,
			unnest(ARRAY['a', 'B', 'b', 'ab', 'a b', 'é', 'z', '', '"q"', 'Z']) t`,
		"INSERT INTO big SELECT g * 1000003, 'v' FROM generate_series(-200, 200) g",
		"INSERT INTO big VALUES (-9223372036854775808, 'min'), (9223372036854775807, 'max')",
		"ANALYZE comp", "ANALYZE big",
	)
	_, tables := open(t, e.cfg)
	r := newReader(t, e.cfg)
	ctx := testCtx(t)

	// The plans: keyset statements that an index scan serves.
	conn, err := r.conn(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		name, index string
		params      []string
		order       []string
	}{
		{"public.comp", "comp_pkey", []string{"5", "a", "7"}, []string{"n", "txt"}},
		{"public.big", "big_pkey", []string{"5", "7"}, []string{"id"}},
	} {
		p, err := r.plan(ctx, conn, tableNamed(t, tables, c.name))
		if err != nil {
			t.Fatal(err)
		}
		if !slices.Equal(p.names, c.order) {
			t.Fatalf("%s pages by %v", c.name, p.names)
		}
		params := make([][]byte, len(c.params))
		for i, v := range c.params {
			params[i] = []byte(v)
		}
		res := conn.PgConn().ExecParams(ctx, "EXPLAIN (FORMAT JSON) "+p.next, params, p.nextOIDs, nil, nil).Read()
		if res.Err != nil {
			t.Fatal(res.Err)
		}
		plan := string(res.Rows[0][0])
		if !strings.Contains(plan, `"Index Name": "`+c.index+`"`) || !strings.Contains(plan, `"Index Cond"`) || strings.Contains(plan, `"Node Type": "Sort"`) {
			t.Fatalf("%s: %s is not an index scan of %s:\n%s", c.name, p.next, c.index, plan)
		}
	}

	rng := rand.New(rand.NewPCG(3, 4))
	for _, c := range []struct {
		name, keys string // keys: a table of every key ever present, ordered as the index
		limit      int
		insert     func(i int) (key, stmt string)
		del        func(key string) string
	}{
		{
			name: "public.comp", keys: "CREATE TEMP TABLE allkeys (txt text, n int)", limit: 7,
			insert: func(i int) (string, string) {
				n, txt := rng.IntN(50)-5, fmt.Sprintf("new%d", i)
				return txt + "|" + strconv.Itoa(n), fmt.Sprintf("INSERT INTO comp VALUES ('%s', %d, 'i')", txt, n)
			},
			del: func(key string) string {
				txt, n, _ := strings.Cut(key, "|")
				return fmt.Sprintf("DELETE FROM comp WHERE n = %s AND txt = '%s'", n, strings.ReplaceAll(txt, "'", "''"))
			},
		},
		{
			name: "public.big", keys: "CREATE TEMP TABLE allkeys (id bigint)", limit: 11,
			insert: func(i int) (string, string) {
				id := (rng.Int64N(401) - 200) * 1000003
				id += 1 + rng.Int64N(1000000)
				return strconv.FormatInt(id, 10), fmt.Sprintf("INSERT INTO big VALUES (%d, 'i') ON CONFLICT DO NOTHING", id)
			},
			del: func(key string) string { return "DELETE FROM big WHERE id = " + key },
		},
	} {
		tb := tableNamed(t, tables, c.name)
		present := map[string]bool{} // now
		initial := map[string]bool{}
		insertedAt := map[string]int{} // key → rows visited when it was inserted
		deletedAt := map[string]int{}  // key → rows visited when it was deleted
		for _, ev := range mustReadAll(t, r, tb) {
			k := keyString(t, ev.Key)
			present[k], initial[k] = true, true
		}
		var visited []string
		cursor := ""
		for step := 0; ; step++ {
			chunk, next, err := r.ReadChunk(ctx, tb, cursor, c.limit)
			if err != nil {
				t.Fatal(err)
			}
			for _, ev := range chunk {
				visited = append(visited, keyString(t, ev.Key))
			}
			if len(chunk) < c.limit {
				break
			}
			cursor = next
			// Writes between chunks: fresh keys anywhere, deletes of any
			// row (visited or not).
			for i := range 3 {
				k, stmt := c.insert(step*3 + i)
				if _, ok := insertedAt[k]; ok || initial[k] {
					continue
				}
				e.exec(t, stmt)
				insertedAt[k], present[k] = len(visited), true
			}
			for range 2 {
				var keys []string
				for k := range present {
					keys = append(keys, k)
				}
				slices.Sort(keys)
				k := keys[rng.IntN(len(keys))]
				e.exec(t, c.del(k))
				delete(present, k)
				deletedAt[k] = len(visited)
			}
		}
		// The index's order of every key ever present.
		conn, err := pgx.Connect(ctx, srv.ConnString(e.name))
		if err != nil {
			t.Fatal(err)
		}
		if _, err := conn.Exec(ctx, c.keys); err != nil {
			t.Fatal(err)
		}
		var all []string
		for k := range initial {
			all = append(all, k)
		}
		for k := range insertedAt {
			all = append(all, k)
		}
		rank := map[string]int{}
		if c.name == "public.comp" {
			for _, k := range all {
				txt, n, _ := strings.Cut(k, "|")
				if _, err := conn.Exec(ctx, "INSERT INTO allkeys VALUES ($1, $2::int)", txt, n); err != nil {
					t.Fatal(err)
				}
			}
			rows, _ := conn.Query(ctx, "SELECT txt || '|' || n FROM allkeys ORDER BY n, txt")
			ks, err := pgx.CollectRows(rows, pgx.RowTo[string])
			if err != nil {
				t.Fatal(err)
			}
			for i, k := range ks {
				rank[k] = i
			}
		} else {
			ids := make([]int64, len(all))
			for i, k := range all {
				ids[i], _ = strconv.ParseInt(k, 10, 64)
			}
			slices.Sort(ids)
			for i, id := range ids {
				rank[strconv.FormatInt(id, 10)] = i
			}
		}
		conn.Close(ctx)
		if len(rank) != len(all) {
			t.Fatalf("%d ranks for %d keys", len(rank), len(all))
		}

		was := map[string]bool{}
		for i, k := range visited {
			if _, ok := rank[k]; !ok {
				t.Fatalf("%s: visited %s, which never existed", c.name, k)
			}
			if was[k] {
				t.Fatalf("%s: visited %s twice", c.name, k)
			}
			was[k] = true
			if i > 0 && rank[k] <= rank[visited[i-1]] {
				t.Fatalf("%s: %s visited after %s", c.name, k, visited[i-1])
			}
		}
		// The cursor position (rank of the last row visited) after n rows.
		pos := func(n int) int {
			if n == 0 {
				return -1
			}
			return rank[visited[n-1]]
		}
		for k := range rank {
			ins, inserted := insertedAt[k]
			del, deleted := deletedAt[k]
			ahead := !inserted || rank[k] > pos(ins) // existed ahead of the cursor
			switch {
			case !deleted && ahead && !was[k]:
				t.Fatalf("%s: %s (inserted %v) was never visited", c.name, k, inserted)
			case inserted && !ahead && was[k]:
				t.Fatalf("%s: %s was inserted behind the cursor, yet visited", c.name, k)
			case deleted && rank[k] > pos(del) && was[k]:
				t.Fatalf("%s: %s was deleted ahead of the cursor, yet visited", c.name, k)
			}
		}
		if len(deletedAt) < 10 || len(insertedAt) < 10 {
			t.Fatalf("%s: only %d inserts and %d deletes while paging", c.name, len(insertedAt), len(deletedAt))
		}
		t.Logf("%s: %d rows visited in chunks of %d, %d inserted and %d deleted meanwhile", c.name, len(visited), c.limit, len(insertedAt), len(deletedAt))
	}
}

// mustReadAll reads a whole table in chunks of 1000.
func mustReadAll(t testing.TB, r *ChunkReader, tb schema.Table) []event.Event {
	t.Helper()
	rows, _ := readAll(t, r, tb, 1000)
	return rows
}

// TestSeedCursor: a cursor continues where its chunk ended, can be used
// again, and anything else is refused with ErrBadCursor and a message that
// says what is wrong.
func TestSeedCursor(t *testing.T) {
	t.Parallel()
	srv := dbtest.SharedPostgres(t)
	e := newEnv(t, srv, "public.c", "public.empty")
	e.exec(t,
		"CREATE TABLE c (id int PRIMARY KEY, v text)",
		"INSERT INTO c SELECT g, 'v' || g FROM generate_series(1, 10) g",
		"CREATE TABLE empty (id int PRIMARY KEY)",
	)
	_, tables := open(t, e.cfg)
	tb := tableNamed(t, tables, "public.c")
	r := newReader(t, e.cfg)
	ctx := testCtx(t)
	ids := func(rows []event.Event) []string {
		var out []string
		for _, ev := range rows {
			out = append(out, keyString(t, ev.Key))
		}
		return out
	}

	rows, c1, err := r.ReadChunk(ctx, tb, "", 3)
	if err != nil {
		t.Fatal(err)
	}
	if got := ids(rows); !slices.Equal(got, []string{"1", "2", "3"}) || c1 != `{"key":["id"],"after":["3"]}` {
		t.Fatalf("first chunk %v, cursor %s", got, c1)
	}
	for range 2 { // the same cursor twice: the same rows
		rows, c2, err := r.ReadChunk(ctx, tb, c1, 3)
		if err != nil {
			t.Fatal(err)
		}
		if got := ids(rows); !slices.Equal(got, []string{"4", "5", "6"}) || c2 != `{"key":["id"],"after":["6"]}` {
			t.Fatalf("second chunk %v, cursor %s", got, c2)
		}
	}
	rows, c3, err := r.ReadChunk(ctx, tb, `{"key":["id"],"after":["8"]}`, 5)
	if err != nil {
		t.Fatal(err)
	}
	if got := ids(rows); !slices.Equal(got, []string{"9", "10"}) || c3 != `{"key":["id"],"after":["10"]}` {
		t.Fatalf("last chunk %v, cursor %s", got, c3)
	}
	rows, c4, err := r.ReadChunk(ctx, tb, c3, 5)
	if err != nil || len(rows) != 0 || c4 != c3 {
		t.Fatalf("after the end: %d rows, cursor %s, %v", len(rows), c4, err)
	}
	rows, c5, err := r.ReadChunk(ctx, tableNamed(t, tables, "public.empty"), "", 5)
	if err != nil || len(rows) != 0 || c5 != "" {
		t.Fatalf("empty table: %d rows, cursor %q, %v", len(rows), c5, err)
	}

	for _, c := range []struct{ cursor, want string }{
		{"3", "cannot unmarshal"},
		{"{", "unexpected EOF"},
		{`{"key":["id"],"after":["3"]} x`, "after the JSON object"},
		{`{"key":["id"],"after":["3"],"x":1}`, "unknown field"},
		{`{"key":["v"],"after":["3"]}`, "it is for the key (v), the table's key is (id)"},
		{`{"key":["id"],"after":["3","4"]}`, "2 values for a key of 1 columns"},
		{`{"key":["id"]}`, "0 values for a key of 1 columns"},
		{`{"key":["id"],"after":["3"],"after64":["Mw=="]}`, "both"},
		{`{"key":["id"],"after":["three"]}`, "invalid input syntax for type integer"},
		{`{"key":["id"],"after":["99999999999"]}`, "out of range"},
	} {
		_, _, err := r.ReadChunk(ctx, tb, c.cursor, 3)
		if !errors.Is(err, ErrBadCursor) || !strings.Contains(err.Error(), c.want) {
			t.Errorf("cursor %s: %v, want ErrBadCursor saying %q", c.cursor, err, c.want)
		}
	}
	// The reader still works after refusals.
	if rows, _, err := r.ReadChunk(ctx, tb, c1, 1); err != nil || len(rows) != 1 {
		t.Fatalf("after refusals: %d rows, %v", len(rows), err)
	}
	if _, _, err := r.ReadChunk(ctx, tb, "", 0); err == nil {
		t.Fatal("limit 0 accepted")
	}
}

// TestSeedCursorEncoding: values that are not UTF-8 (a SQL_ASCII
// database's text) round-trip through base64; a key index whose columns
// were reordered is named as such.
func TestSeedCursorEncoding(t *testing.T) {
	names := []string{"a", "b"}
	for _, vals := range [][][]byte{
		{[]byte("1"), []byte(`x"y\z ü`)},
		{[]byte("1"), {0xff, 0xfe, 'a'}},
		{[]byte(""), []byte("")},
	} {
		c := encodeCursor(names, vals)
		got, err := decodeCursor(c, names)
		if err != nil {
			t.Fatal(err)
		}
		if !slices.EqualFunc(got, vals, bytes.Equal) {
			t.Fatalf("%q → %s → %q", vals, c, got)
		}
		if utf8 := !bytes.ContainsAny(vals[1], "\xff"); utf8 == strings.Contains(c, "after64") {
			t.Fatalf("%q encoded as %s", vals, c)
		}
	}
	_, err := decodeCursor(encodeCursor([]string{"b", "a"}, [][]byte{[]byte("1"), []byte("2")}), names)
	if !errors.Is(err, ErrBadCursor) || !strings.Contains(err.Error(), "restart the seed") {
		t.Fatalf("reordered key: %v", err)
	}
}

// TestSeedSchemaMismatch: after each kind of DDL, reading with the older
// schema version fails with ErrSchemaMismatch naming the difference, and
// reading with the version Open now gives works; a DDL that lands between
// a plan and its read is caught by the read's own check. Tables the seed
// cannot read are refused with plain errors.
func TestSeedSchemaMismatch(t *testing.T) {
	t.Parallel()
	srv := dbtest.SharedPostgres(t)
	e := newEnv(t, srv, "public.m", "public.gone", "public.nokey")
	e.exec(t,
		"CREATE TABLE m (id int PRIMARY KEY, a text, b int)",
		"INSERT INTO m SELECT g, 'a', g FROM generate_series(1, 5) g",
		"CREATE TABLE gone (id int PRIMARY KEY)",
		"CREATE TABLE nokey (a int, b text)",
	)
	s, tables := open(t, e.cfg)
	r := newReader(t, e.cfg)
	ctx := testCtx(t)
	cur := tableNamed(t, tables, "public.m")
	if rows, _, err := r.ReadChunk(ctx, cur, "", 10); err != nil || len(rows) != 5 {
		t.Fatalf("%d rows, %v", len(rows), err)
	}
	reopen := func() schema.Table {
		t.Helper()
		tables, err := s.Open(ctx)
		if err != nil {
			t.Fatal(err)
		}
		return tableNamed(t, tables, "public.m")
	}
	for _, c := range []struct{ ddl, want string }{
		{"ALTER TABLE m ADD COLUMN c int", "the table has a column 4, c integer, which it lacks"},
		{"ALTER TABLE m ALTER COLUMN b TYPE bigint", "column 3 is b bigint in the table, b integer in the schema version"},
		{"ALTER TABLE m DROP COLUMN a", "column 2 is b bigint in the table, a text in the schema version"},
		{"ALTER TABLE m RENAME COLUMN b TO bb", "column 2 is bb bigint in the table, b bigint in the schema version"},
		{"ALTER TABLE m DROP CONSTRAINT m_pkey, ADD PRIMARY KEY (id, bb)", "the key is (id, bb) in the table, (id) in the schema version"},
	} {
		e.exec(t, c.ddl)
		_, _, err := r.ReadChunk(ctx, cur, "", 10)
		if !errors.Is(err, source.ErrSchemaMismatch) || !strings.Contains(err.Error(), c.want) {
			t.Fatalf("after %s: %v, want ErrSchemaMismatch saying %q", c.ddl, err, c.want)
		}
		next := reopen()
		if next.Version <= cur.Version {
			t.Fatalf("after %s: version %d", c.ddl, next.Version)
		}
		cur = next
		if rows, _, err := r.ReadChunk(ctx, cur, "", 10); err != nil || len(rows) != 5 {
			t.Fatalf("after %s, version %d: %d rows, %v", c.ddl, cur.Version, len(rows), err)
		}
	}
	// The old cursor does not fit the new key.
	if _, _, err := r.ReadChunk(ctx, cur, `{"key":["id"],"after":["1"]}`, 10); !errors.Is(err, ErrBadCursor) {
		t.Fatalf("cursor of the old key: %v", err)
	}

	// A DDL between a plan and its read.
	conn, err := r.conn(ctx)
	if err != nil {
		t.Fatal(err)
	}
	p, err := r.plan(ctx, conn, cur)
	if err != nil {
		t.Fatal(err)
	}
	e.exec(t, "ALTER TABLE m ADD COLUMN late int")
	if _, _, changed, err := r.read(ctx, conn, p, nil, 10); err != nil || !changed {
		t.Fatalf("read after a DDL: changed %v, %v", changed, err)
	}
	e.exec(t, "ALTER TABLE m DROP COLUMN late, ALTER COLUMN bb TYPE int")
	if _, _, changed, err := r.read(ctx, conn, p, nil, 10); err != nil || !changed {
		t.Fatalf("read after a type change: changed %v, %v", changed, err)
	}
	if _, _, err := r.ReadChunk(ctx, cur, "", 10); !errors.Is(err, source.ErrSchemaMismatch) {
		t.Fatalf("ReadChunk after a type change: %v", err)
	}
	e.exec(t, "ALTER TABLE m ALTER COLUMN bb TYPE bigint") // back to cur's definition
	if rows, _, err := r.ReadChunk(ctx, cur, "", 10); err != nil || len(rows) != 5 {
		t.Fatalf("back to the version's definition: %d rows, %v", len(rows), err)
	}

	// Refusals that are not mismatches.
	gone := tableNamed(t, tables, "public.gone")
	e.exec(t, "DROP TABLE gone")
	for _, c := range []struct {
		tb   schema.Table
		want string
	}{
		{gone, "table public.gone does not exist"},
		{tableNamed(t, tables, "public.nokey"), "public.nokey has no primary key"},
		{schema.Table{Name: "public.other"}, "not in Config.Tables"},
	} {
		_, _, err := r.ReadChunk(ctx, c.tb, "", 10)
		if err == nil || errors.Is(err, source.ErrSchemaMismatch) || !strings.Contains(err.Error(), c.want) ||
			errors.Is(err, ErrNotSeedable) != (c.tb.Name == "public.nokey") {
			t.Errorf("%s: %v, want an error saying %q", c.tb.Name, err, c.want)
		}
	}
}

// TestSeedWatermark: WriteWatermark creates the watermark table, adds it to
// the adapter's publication while capture runs, and its upserts arrive
// through the capture as data events of public._databus_watermark, in
// order; Open then includes the table. Watermark tables the capture would
// not deliver are refused, and so is a publication the reader may not
// change; a FOR ALL TABLES publication needs no change.
func TestSeedWatermark(t *testing.T) {
	t.Parallel()
	srv := dbtest.SharedPostgres(t)
	e := newEnv(t, srv, "public.orders")
	e.exec(t, "CREATE TABLE orders (id int PRIMARY KEY)")
	s, tables := open(t, e.cfg)
	if len(tables) != 1 {
		t.Fatalf("Open returned %d tables", len(tables))
	}
	run := startRun(t, s, source.Position{})
	r := newReader(t, e.cfg)
	ctx := testCtx(t)
	const mark = "public." + source.WatermarkTableName
	for i, m := range [][2]string{{"seed-1", "L1"}, {"seed-1", "H1"}, {"seed-2", "L1"}} {
		if err := r.WriteWatermark(ctx, mark, m[0], m[1]); err != nil {
			t.Fatal(err)
		}
		e.exec(t, "INSERT INTO orders VALUES ("+strconv.Itoa(i)+")")
	}
	ws := run.waitSCN(t, e.mark(t), time.Minute)
	run.stop(t)
	reg := newRegistry(t, nil)
	var got []string
	for _, w := range ws {
		for i := range w.Events {
			ev := &w.Events[i]
			reg.observe(w, ev)
			if ev.Kind != event.KindData || reg.names[ev.Source] != mark {
				continue
			}
			row, _ := reg.decode(ev)
			got = append(got, fmt.Sprintf("%v %v=%v", ev.Op, row["slot"], row["mark"]))
			if k := keyString(t, ev.Key); k != row["slot"] {
				t.Fatalf("key %s for slot %v", k, row["slot"])
			}
		}
	}
	want := []string{"insert seed-1=L1", "update seed-1=H1", "insert seed-2=L1"}
	if !slices.Equal(got, want) {
		t.Fatalf("watermark events %q, want %q", got, want)
	}
	var pubs int
	if err := e.db.QueryRow(`SELECT count(*) FROM pg_publication_tables WHERE pubname = 'databus' AND tablename = $1`, source.WatermarkTableName).Scan(&pubs); err != nil || pubs != 1 {
		t.Fatalf("watermark table in %d publications (%v)", pubs, err)
	}
	// Open now reports it with the configured table.
	tables, err := s.Open(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(tables) != 2 || tableNamed(t, tables, mark).Key[0] != "slot" {
		t.Fatalf("Open returned %+v", tables)
	}

	for _, c := range []struct{ table, slot, want string }{
		{"app." + source.WatermarkTableName, "s", "in none of the schemas of Config.Tables"},
		{"public.orders", "s", "not of the form <schema>._databus_watermark"},
		{source.WatermarkTableName, "s", "not of the form"},
		{mark, "", "empty watermark slot"},
	} {
		if err := r.WriteWatermark(ctx, c.table, c.slot, "m"); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("WriteWatermark(%q, %q): %v, want an error saying %q", c.table, c.slot, err, c.want)
		}
	}

	// A publication the reader may not change, then one FOR ALL TABLES.
	e.exec(t, "CREATE SCHEMA app", "CREATE TABLE app.items (id int PRIMARY KEY)", "CREATE PUBLICATION allpub FOR ALL TABLES")
	no := false
	cfg := e.cfg
	cfg.Tables = []string{"public.orders", "app.items"}
	cfg.CreatePublication = &no
	r2 := newReader(t, cfg)
	err = r2.WriteWatermark(ctx, "app."+source.WatermarkTableName, "s", "m")
	if err == nil || !strings.Contains(err.Error(), `ALTER PUBLICATION "databus" ADD TABLE "app"."_databus_watermark"`) {
		t.Fatalf("publication without the table: %v", err)
	}
	cfg.Publication = "allpub"
	r3 := newReader(t, cfg)
	if err := r3.WriteWatermark(ctx, "app."+source.WatermarkTableName, "s", "m"); err != nil {
		t.Fatal(err)
	}
	var m string
	if err := e.db.QueryRow(`SELECT mark FROM app._databus_watermark WHERE slot = 's'`).Scan(&m); err != nil || m != "m" {
		t.Fatalf("mark %q, %v", m, err)
	}
	// A table of the same name that is not a watermark table is refused.
	e.exec(t, "DROP TABLE app._databus_watermark", "CREATE TABLE app._databus_watermark (slot text PRIMARY KEY, mark int)")
	r4 := newReader(t, cfg)
	if err := r4.WriteWatermark(ctx, "app."+source.WatermarkTableName, "s", "1"); err == nil || !strings.Contains(err.Error(), "exists but is not") {
		t.Fatalf("foreign table: %v", err)
	}
}

// TestOpenWatermarkTable: a watermark table that exists when Open creates
// the publication is published, returned with the configured tables and
// captured like them.
func TestOpenWatermarkTable(t *testing.T) {
	t.Parallel()
	srv := dbtest.SharedPostgres(t)
	e := newEnv(t, srv, "public.t")
	e.exec(t, "CREATE TABLE t (id int PRIMARY KEY)", "CREATE TABLE _databus_watermark (slot text PRIMARY KEY, mark text NOT NULL)")
	s, tables := open(t, e.cfg)
	if len(tables) != 2 || tables[1].Name != "public."+source.WatermarkTableName {
		t.Fatalf("Open returned %+v", tables)
	}
	var pubs int
	if err := e.db.QueryRow(`SELECT count(*) FROM pg_publication_tables WHERE pubname = 'databus'`).Scan(&pubs); err != nil || pubs != 2 {
		t.Fatalf("%d tables published (%v)", pubs, err)
	}
	e.tx(t, "INSERT INTO t VALUES (1)", "INSERT INTO _databus_watermark VALUES ('s', 'low')")
	ws := dataWindows(captureUntilMark(t, e, s, source.Position{}))
	if len(ws) != 1 || len(ws[0].Events) != 4 { // two schema changes, two inserts
		t.Fatalf("%d windows: %+v", len(ws), ws)
	}
	reg := newRegistry(t, tables)
	row, _ := reg.decode(&ws[0].Events[3])
	if ws[0].Events[3].Source != tables[1].ID || row["mark"] != "low" {
		t.Fatalf("watermark event %+v: %v", ws[0].Events[3], row)
	}
}

// TestSeedWaitsForOpenTransactions: ReadChunk does not read before the
// writing transactions that were open when it was called have ended, and
// then sees what they committed; ctx bounds the wait.
func TestSeedWaitsForOpenTransactions(t *testing.T) {
	t.Parallel()
	srv := dbtest.SharedPostgres(t)
	e := newEnv(t, srv, "public.w")
	e.exec(t, "CREATE TABLE w (id int PRIMARY KEY)", "INSERT INTO w VALUES (1)")
	_, tables := open(t, e.cfg)
	r := newReader(t, e.cfg)
	tx := begin(t, e.db)
	txExec(t, tx, "INSERT INTO w VALUES (2)")

	type result struct {
		rows []event.Event
		err  error
	}
	done := make(chan result, 1)
	ctx := testCtx(t)
	go func() {
		rows, _, err := r.ReadChunk(ctx, tables[0], "", 10)
		done <- result{rows, err}
	}()
	select {
	case res := <-done:
		t.Fatalf("ReadChunk returned while a transaction older than it was open: %d rows, %v", len(res.rows), res.err)
	case <-time.After(300 * time.Millisecond):
	}
	if err := tx.Commit(); err != nil {
		t.Fatal(err)
	}
	select {
	case res := <-done:
		if res.err != nil || len(res.rows) != 2 {
			t.Fatalf("%d rows, %v", len(res.rows), res.err)
		}
	case <-time.After(time.Minute):
		t.Fatal("ReadChunk still waiting a minute after the transaction committed")
	}

	tx2 := begin(t, e.db)
	txExec(t, tx2, "INSERT INTO w VALUES (3)")
	short, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
	defer cancel()
	_, _, err := r.ReadChunk(short, tables[0], "", 10)
	if !errors.Is(err, context.DeadlineExceeded) || !strings.Contains(err.Error(), "waiting for the transactions in progress") {
		t.Fatalf("ReadChunk behind an open transaction with a short deadline: %v", err)
	}
	if err := tx2.Rollback(); err != nil {
		t.Fatal(err)
	}
	if rows, _, err := r.ReadChunk(ctx, tables[0], "", 10); err != nil || len(rows) != 2 {
		t.Fatalf("after the rollback: %d rows, %v", len(rows), err)
	}
}

// TestSeedEstimateRows: a small table is counted; a large one is estimated
// from its size before it is analyzed, and from its statistics after.
func TestSeedEstimateRows(t *testing.T) {
	t.Parallel()
	srv := dbtest.SharedPostgres(t)
	e := newEnv(t, srv, "public.small", "public.large")
	e.exec(t,
		"CREATE TABLE small (id int PRIMARY KEY)",
		"INSERT INTO small SELECT generate_series(1, 1000)",
		"CREATE TABLE large (id int PRIMARY KEY, v text) WITH (autovacuum_enabled = false)",
		"INSERT INTO large SELECT g, repeat(md5(g::text), 5) FROM generate_series(1, 60000) g",
	)
	_, tables := open(t, e.cfg)
	r := newReader(t, e.cfg)
	ctx := testCtx(t)
	if n, err := r.EstimateRows(ctx, tableNamed(t, tables, "public.small")); err != nil || n != 1000 {
		t.Fatalf("small: %d, %v", n, err)
	}
	large := tableNamed(t, tables, "public.large")
	n, err := r.EstimateRows(ctx, large)
	if err != nil || n < 30000 || n > 120000 {
		t.Fatalf("large, never analyzed: %d, %v", n, err)
	}
	e.exec(t, "ANALYZE large")
	if n, err = r.EstimateRows(ctx, large); err != nil || n < 54000 || n > 66000 {
		t.Fatalf("large, analyzed: %d, %v", n, err)
	}
	if _, err := r.EstimateRows(ctx, schema.Table{Name: "public.x"}); err == nil {
		t.Fatal("a table outside Config.Tables estimated")
	}
}

// TestNewChunkReader: the configuration is validated as the Source's; a
// closed reader refuses calls.
func TestNewChunkReader(t *testing.T) {
	if _, err := NewChunkReader(Config{ConnString: "postgres://x/y", StateDir: t.TempDir()}); !errors.Is(err, ErrConfig) {
		t.Fatalf("no tables: %v", err)
	}
	r, err := NewChunkReader(Config{ConnString: "postgres://127.0.0.1:1/y", Tables: []string{"public.t"}, StateDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	if err := r.Close(); err != nil {
		t.Fatal(err)
	}
	if _, _, err := r.ReadChunk(context.Background(), schema.Table{Name: "public.t"}, "", 1); !errors.Is(err, ErrClosed) {
		t.Fatalf("ReadChunk after Close: %v", err)
	}
	if err := r.WriteWatermark(context.Background(), "public."+source.WatermarkTableName, "s", "m"); !errors.Is(err, ErrClosed) {
		t.Fatalf("WriteWatermark after Close: %v", err)
	}
	if got := watermarkTables([]string{"a.x", "b.y", "a.z", "c._databus_watermark", "c.t"}); !slices.Equal(got, []string{"a._databus_watermark", "b._databus_watermark"}) {
		t.Fatalf("watermark tables %v", got)
	}
}

// BenchmarkReadChunk reads a 100,000-row table of about 200-byte rows in
// chunks of 4096 with ReadChunk and, in the same run, with a plain
// SELECT * FROM t through pgx (the ceiling: rows read off the wire, not
// decoded), in pgx's default (binary) format and in text format.
func BenchmarkReadChunk(b *testing.B) {
	srv := dbtest.SharedPostgres(b)
	e := newEnv(b, srv, "public.t")
	const n = 100_000
	e.exec(b,
		"CREATE TABLE t (id bigint PRIMARY KEY, a int, b bigint, s text, d timestamptz, x double precision, n numeric(12,2), u uuid)",
		fmt.Sprintf(`INSERT INTO t SELECT g, g %% 1000, g * 7919, repeat(md5(g::text), 3) || 'abcdefghijklmnopqrstuvwxyz0123456789',
			'2024-01-01'::timestamptz + g * interval '1.5 second', g / 3.0, g / 100.0, md5(g::text)::uuid
			FROM generate_series(1, %d) g`, n),
		"VACUUM ANALYZE t",
	)
	var avg float64
	if err := e.db.QueryRow("SELECT avg(pg_column_size(t.*)) FROM t").Scan(&avg); err != nil {
		b.Fatal(err)
	}
	_, tables := open(b, e.cfg)
	r := newReader(b, e.cfg)
	ctx := testCtx(b)
	conn, err := pgx.Connect(ctx, srv.ConnString(e.name))
	if err != nil {
		b.Fatal(err)
	}
	defer conn.Close(ctx)

	// plain reads the table with one SELECT * and returns how long it took.
	plain := func(args ...any) time.Duration {
		start := time.Now()
		rows, err := conn.Query(ctx, "SELECT * FROM t", args...)
		if err != nil {
			b.Fatal(err)
		}
		got := 0
		for rows.Next() {
			_ = rows.RawValues()
			got++
		}
		if rows.Err() != nil || got != n {
			b.Fatalf("SELECT * read %d rows: %v", got, rows.Err())
		}
		return time.Since(start)
	}

	b.ReportAllocs()
	b.ResetTimer()
	var ceiling, textCeiling time.Duration
	var bytesOut int64
	for range b.N {
		b.StopTimer()
		ceiling += plain()
		// The same in text format, which ReadChunk needs: the server's
		// text output is most of the difference.
		textCeiling += plain(pgx.QueryResultFormats{pgx.TextFormatCode})
		b.StartTimer()

		cursor, got := "", 0
		for {
			chunk, next, err := r.ReadChunk(ctx, tables[0], cursor, 4096)
			if err != nil {
				b.Fatal(err)
			}
			got += len(chunk)
			for i := range chunk {
				bytesOut += int64(len(chunk[i].Key) + len(chunk[i].Payload))
			}
			if len(chunk) < 4096 {
				break
			}
			cursor = next
		}
		if got != n {
			b.Fatalf("ReadChunk read %d rows", got)
		}
	}
	el := b.Elapsed()
	b.StopTimer()
	rate := float64(n*b.N) / el.Seconds()
	ceil := float64(n*b.N) / ceiling.Seconds()
	textCeil := float64(n*b.N) / textCeiling.Seconds()
	b.ReportMetric(rate, "rows/s")
	b.ReportMetric(float64(bytesOut)/el.Seconds()/1e6, "MB/s")
	b.ReportMetric(ceil, "ceiling-rows/s")
	b.ReportMetric(textCeil, "text-ceiling-rows/s")
	b.Logf("%d rows of %.0f bytes (on disk), chunks of 4096: ReadChunk %.0f rows/s; plain SELECT * via pgx %.0f rows/s (%.0f%%), in text format %.0f rows/s (%.0f%%)",
		n, avg, rate, ceil, 100*rate/ceil, textCeil, 100*rate/textCeil)
}
