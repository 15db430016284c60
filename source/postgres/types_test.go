package postgres

import (
	"fmt"
	"math"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"

	"github.com/databus-go/databus/event"
	"github.com/databus-go/databus/internal/dbtest"
	"github.com/databus-go/databus/source"
)

// typeColumns are the columns of the type-coverage table, with the Avro
// type each must get (without the ["null", ...] union every column has).
var typeColumns = []struct{ name, sqlType, avro string }{
	{"c_int2", "smallint", `"int"`},
	{"c_int4", "integer", `"int"`},
	{"c_int8", "bigint", `"long"`},
	{"c_num", "numeric", `"string"`},
	{"c_num_ps", "numeric(10,2)", `"string"`},
	{"c_real", "real", `"float"`},
	{"c_dbl", "double precision", `"double"`},
	{"c_bool", "boolean", `"boolean"`},
	{"c_text", "text", `"string"`},
	{"c_varchar", "varchar(10)", `"string"`},
	{"c_char", "char(3)", `"string"`},
	{"c_bytea", "bytea", `"bytes"`},
	{"c_date", "date", `{"type":"int","logicalType":"date"}`},
	{"c_time", "time", `{"type":"long","logicalType":"time-micros"}`},
	{"c_timetz", "timetz", `"string"`},
	{"c_ts", "timestamp", `{"type":"long","logicalType":"local-timestamp-micros"}`},
	{"c_tstz", "timestamptz", `{"type":"long","logicalType":"timestamp-micros"}`},
	{"c_interval", "interval", `"string"`},
	{"c_uuid", "uuid", `{"type":"string","logicalType":"uuid"}`},
	{"c_json", "json", `"string"`},
	{"c_jsonb", "jsonb", `"string"`},
	{"c_int_arr", "int[]", `{"type":"array","items":["null","int"]}`},
	{"c_text_arr", "text[]", `{"type":"array","items":["null","string"]}`},
	{"c_mood", "mood", `"string"`},
	{"c_mood_arr", "mood[]", `{"type":"array","items":["null","string"]}`},
	{"c_inet", "inet", `"string"`},
	{"c_cidr", "cidr", `"string"`},
	{"c_mac", "macaddr", `"string"`},
	{"c_dom", "posint", `"int"`},
	{"c_2d", "int[]", `{"type":"array","items":["null","int"]}`},
	{"c_tstz_arr", "timestamptz[]", `{"type":"array","items":["null",{"type":"long","logicalType":"timestamp-micros"}]}`},
	{"c_bytea_arr", "bytea[]", `{"type":"array","items":["null","bytes"]}`},
	{"c_num_arr", "numeric[]", `{"type":"array","items":["null","string"]}`},
	{"c_point", "point", `"string"`},
	{"c_money", "money", `"string"`},
	{"c_box_arr", "box[]", `"string"`},
	{"c_dom_arr", "posint[]", `{"type":"array","items":["null","int"]}`},
	{"c_bpchar", `"char"`, `"string"`},
}

// TestTypes captures rows of every supported type, extremes, NaN and
// infinities included, and a row of NULLs, and compares the decoded events
// with what the server says the values are.
func TestTypes(t *testing.T) {
	t.Parallel()
	srv := dbtest.SharedPostgres(t)
	e := newEnv(t, srv, "public.types")
	var cols []string
	for _, c := range typeColumns {
		cols = append(cols, c.name+" "+c.sqlType)
	}
	e.exec(t,
		"CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy')",
		"CREATE DOMAIN posint AS integer CHECK (VALUE > 0)",
		"CREATE TABLE types (id int PRIMARY KEY, "+strings.Join(cols, ", ")+")",
	)
	s, tables := open(t, e.cfg)
	// Open's schema: every column nullable with the documented Avro type.
	tb := tables[0]
	for i, c := range typeColumns {
		col := tb.Columns[i+1]
		if col.Name != c.name || string(col.Avro) != c.avro || !col.Nullable {
			t.Errorf("column %s: %s nullable=%v, want %s", col.Name, col.Avro, col.Nullable, c.avro)
		}
	}
	if tb.Columns[len(tb.Columns)-1].Name != UnchangedColumn {
		t.Errorf("last column %s", tb.Columns[len(tb.Columns)-1].Name)
	}
	ins := func(id int, vals map[string]string) {
		names, lits := []string{"id"}, []string{fmt.Sprint(id)}
		for k, v := range vals {
			names, lits = append(names, k), append(lits, v)
		}
		e.exec(t, "INSERT INTO types ("+strings.Join(names, ", ")+") VALUES ("+strings.Join(lits, ", ")+")")
	}
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
	ins(5, nil)
	ins(6, map[string]string{
		"c_real": "1.17549435e-38", "c_dbl": "4.9e-324", "c_date": "'-infinity'", "c_ts": "'-infinity'",
		"c_tstz": "'1969-12-31 23:59:59.999999+00'", "c_time": "'23:59:59.999999'", "c_num": "'-0.000000000000000000001'",
	})
	ws := captureUntilMark(t, e, s, source.Position{})
	reg := newRegistry(t, nil)
	got := map[int]map[string]any{}
	for _, w := range ws {
		for i := range w.Events {
			ev := &w.Events[i]
			reg.observe(w, ev)
			if ev.Kind != event.KindData {
				continue
			}
			row, _ := reg.decode(ev)
			if k := keyString(t, ev.Key); k != fmt.Sprint(row["id"]) {
				t.Fatalf("key %s for row %v", k, row["id"])
			}
			delete(row, UnchangedColumn)
			got[row["id"].(int)] = normalise(row)
		}
	}
	want := e.expectedTypes(t)
	opts := []cmp.Option{cmpopts.EquateNaNs()}
	for id := 1; id <= 6; id++ {
		if diff := cmp.Diff(want[id], got[id], opts...); diff != "" {
			t.Errorf("row %d (-want +got):\n%s", id, diff)
		}
	}
}

// normalise makes decoded values comparable: times become microseconds
// (days for dates), as numbers.
func normalise(row map[string]any) map[string]any {
	var conv func(v any) any
	conv = func(v any) any {
		switch x := v.(type) {
		case time.Time:
			// Wall clock read as UTC: the same for timestamp-micros (UTC)
			// and local-timestamp-micros.
			return wallMicros(x)
		case time.Duration:
			return x.Microseconds()
		case []any:
			for i := range x {
				x[i] = conv(x[i])
			}
			return x
		}
		return v
	}
	if d, ok := row["c_date"].(time.Time); ok {
		row["c_date"] = d.Unix() / 86400 // midnight UTC: exact
	}
	for k, v := range row {
		row[k] = conv(v)
	}
	return row
}

// wallMicros is the wall clock of t read as UTC, in microseconds since the
// epoch, exact up to the int64 extremes.
func wallMicros(t time.Time) int64 {
	y, mo, d := t.Date()
	h, mi, s := t.Clock()
	u := time.Date(y, mo, d, h, mi, s, t.Nanosecond(), time.UTC)
	sec, us := u.Unix(), int64(u.Nanosecond()/1000)
	if sec < 0 {
		return (sec+1)*1_000_000 - (1_000_000 - us)
	}
	return sec*1_000_000 + us
}

// expectedTypes is the rows of the type table as the stream must decode
// them: literal values, and temporal values as the server computes them.
func (e *env) expectedTypes(t testing.TB) map[int]map[string]any {
	t.Helper()
	row := func(vals map[string]any) map[string]any {
		m := map[string]any{}
		for _, c := range typeColumns {
			m[c.name] = nil
		}
		for k, v := range vals {
			m[k] = v
		}
		return m
	}
	want := map[int]map[string]any{
		1: row(map[string]any{
			"id": 1, "c_int2": 12, "c_int4": -7, "c_int8": int64(9000000000),
			"c_num": "12345678901234567890.123456789", "c_num_ps": "3.10", "c_real": float32(1.5), "c_dbl": 0.1,
			"c_bool": true, "c_text": `héllo "q" 🙂`, "c_varchar": "abc", "c_char": "ab ", "c_bytea": []byte{0, 0xff, 0x10},
			"c_timetz": "13:45:56+02", "c_interval": "P1Y2M3DT4H5M6.5S", "c_uuid": "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11",
			"c_json": `{"a": [1, 2]}`, "c_jsonb": `{"a": [1, 2], "b": 1}`,
			"c_int_arr": []any{1, nil, 3}, "c_text_arr": []any{"a b", "", nil, "NULL", "x,y", `q"z`, `back\slash`, "{}"},
			"c_mood": "happy", "c_mood_arr": []any{"sad", "happy"}, "c_inet": "192.168.0.1/24", "c_cidr": "10.0.0.0/8",
			"c_mac": "08:00:2b:01:02:03", "c_dom": 5, "c_2d": []any{1, 2, 3, 4},
			"c_tstz_arr": []any{int64(1704067200000000), int64(math.MaxInt64), nil}, "c_bytea_arr": []any{[]byte{1}, nil, []byte{}},
			"c_num_arr": []any{"1.5", "NaN", "-Infinity"}, "c_point": "(1,2)", "c_money": "$12.34",
			"c_box_arr": "{(1,1),(0,0);(2,2),(1,1)}", "c_dom_arr": []any{1, 2}, "c_bpchar": "x",
		}),
		2: row(map[string]any{
			"id": 2, "c_int2": -32768, "c_int4": math.MinInt32, "c_int8": int64(math.MinInt64),
			"c_num": "-Infinity", "c_num_ps": "NaN", "c_real": float32(math.Inf(-1)), "c_dbl": math.Inf(-1),
			"c_bool": false, "c_text": "", "c_interval": "P-1DT-1S", "c_int_arr": []any{}, "c_bytea": []byte{}, "c_jsonb": "[]",
			"c_2d": []any{7, 8},
		}),
		3: row(map[string]any{
			"id": 3, "c_int2": 32767, "c_int4": math.MaxInt32, "c_int8": int64(math.MaxInt64),
			"c_num": "Infinity", "c_num_ps": "99999999.99", "c_real": float32(math.MaxFloat32), "c_dbl": math.MaxFloat64,
			"c_text": strings.Repeat("x", 100000),
		}),
		4: row(map[string]any{"id": 4, "c_real": float32(math.NaN()), "c_dbl": math.NaN(), "c_num": "NaN"}),
		5: row(map[string]any{"id": 5}),
		6: row(map[string]any{"id": 6, "c_real": float32(1.17549435e-38), "c_dbl": 4.9e-324, "c_num": "-0.000000000000000000001"}),
	}
	rows, err := e.db.Query(`SELECT id,
		CASE WHEN c_date = 'infinity' THEN 2147483647 WHEN c_date = '-infinity' THEN -2147483648 ELSE c_date - date '1970-01-01' END,
		(extract(epoch FROM c_time) * 1000000)::int8,
		CASE WHEN c_ts = 'infinity' OR c_ts > '294247-01-01' THEN 9223372036854775807 WHEN c_ts = '-infinity' THEN -9223372036854775808
			ELSE (extract(epoch FROM c_ts) * 1000000)::int8 END,
		CASE WHEN c_tstz = 'infinity' OR c_tstz > '294247-01-01' THEN 9223372036854775807 WHEN c_tstz = '-infinity' THEN -9223372036854775808
			ELSE (extract(epoch FROM c_tstz) * 1000000)::int8 END
		FROM types`)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	for rows.Next() {
		var id int
		var date, tm, ts, tstz *int64
		if err := rows.Scan(&id, &date, &tm, &ts, &tstz); err != nil {
			t.Fatal(err)
		}
		for name, v := range map[string]*int64{"c_date": date, "c_time": tm, "c_ts": ts, "c_tstz": tstz} {
			if v != nil {
				want[id][name] = *v
			}
		}
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	return want
}
