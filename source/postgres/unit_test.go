package postgres

import (
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/databus-go/databus/schema"
)

func TestParseArray(t *testing.T) {
	type el struct {
		V    string
		Null bool
	}
	for _, c := range []struct {
		in   string
		want []el
		bad  bool
	}{
		{in: "{}", want: nil},
		{in: "{1,2,3}", want: []el{{V: "1"}, {V: "2"}, {V: "3"}}},
		{in: `{NULL,null,"NULL",""}`, want: []el{{Null: true}, {Null: true}, {V: "NULL"}, {V: ""}}},
		{in: `{"a b","x,y","q\"z","back\\slash","{}"}`, want: []el{{V: "a b"}, {V: "x,y"}, {V: `q"z`}, {V: `back\slash`}, {V: "{}"}}},
		{in: "{{1,2},{3,4}}", want: []el{{V: "1"}, {V: "2"}, {V: "3"}, {V: "4"}}},
		{in: "[0:1]={7,8}", want: []el{{V: "7"}, {V: "8"}}},
		{in: "[1:1][2:3]={{a,b}}", want: []el{{V: "a"}, {V: "b"}}},
		{in: `{"\\x0102",NULL}`, want: []el{{V: `\x0102`}, {Null: true}}},
		{in: "", bad: true},
		{in: "{", bad: true},
		{in: "{1,}", bad: true},
		{in: "{1", bad: true},
		{in: `{"a}`, bad: true},
		{in: "{1}x", bad: true},
		{in: "[0:1]", bad: true},
		{in: "{{{{{{{{1}}}}}}}}", bad: true},
	} {
		var got []el
		err := parseArray([]byte(c.in), func(e []byte, null bool) error {
			got = append(got, el{string(e), null})
			return nil
		})
		if c.bad {
			if err == nil {
				t.Errorf("%q: no error, got %v", c.in, got)
			}
			continue
		}
		if err != nil {
			t.Errorf("%q: %v", c.in, err)
			continue
		}
		if diff := cmp.Diff(c.want, got); diff != "" {
			t.Errorf("%q (-want +got):\n%s", c.in, diff)
		}
	}
}

// quoteArray renders elements as array_out does.
func quoteArray(elems []string) string {
	var b strings.Builder
	b.WriteByte('{')
	for i, e := range elems {
		if i > 0 {
			b.WriteByte(',')
		}
		b.WriteByte('"')
		for _, c := range []byte(e) {
			if c == '"' || c == '\\' {
				b.WriteByte('\\')
			}
			b.WriteByte(c)
		}
		b.WriteByte('"')
	}
	b.WriteByte('}')
	return b.String()
}

func FuzzParseArray(f *testing.F) {
	f.Add("{1,2,NULL}", "a,b")
	f.Add(`{"a\"b",{c}}`, `x"\`)
	f.Add("[1:2]={{1},{2}}", "")
	f.Fuzz(func(t *testing.T, raw, joined string) {
		// Arbitrary input never panics.
		_ = parseArray([]byte(raw), func([]byte, bool) error { return nil })
		// Quoted elements round-trip.
		elems := strings.Split(joined, ",")
		var got []string
		if err := parseArray([]byte(quoteArray(elems)), func(e []byte, null bool) error {
			got = append(got, string(e))
			return nil
		}); err != nil {
			t.Fatalf("%q: %v", quoteArray(elems), err)
		}
		if !cmp.Equal(elems, got) {
			t.Fatalf("%q: got %q", elems, got)
		}
	})
}

func TestTemporal(t *testing.T) {
	us := func(ts time.Time) int64 { return ts.UnixMicro() }
	days := func(y int, m time.Month, d int) int64 { return time.Date(y, m, d, 0, 0, 0, 0, time.UTC).Unix() / 86400 }
	for _, c := range []struct {
		in     string
		kind   kind
		want   int64
		wantOK bool
	}{
		{"2024-02-29", kDate, 19782, true},
		{"1970-01-01", kDate, 0, true},
		{"1969-12-31", kDate, -1, true},
		{"0001-01-01 BC", kDate, days(0, 1, 1), true},
		{"4713-01-01 BC", kDate, days(-4712, 1, 1), true},
		{"5874897-12-31", kDate, days(5874897, 12, 31), true},
		{"infinity", kDate, math.MaxInt32, true},
		{"-infinity", kDate, math.MinInt32, true},
		{"2024-13-01", kDate, 0, false},
		{"24-01-01", kDate, 0, false},
		{"13:45:56.123456", kTime, ((13*60+45)*60+56)*1_000_000 + 123456, true},
		{"24:00:00", kTime, 86_400_000_000, true},
		{"00:00:00.5", kTime, 500_000, true},
		{"25:00:00", kTime, 0, false},
		{"13:45", kTime, 0, false},
		{"2024-02-29 13:45:56.5", kTimestamp, us(time.Date(2024, 2, 29, 13, 45, 56, 5e8, time.UTC)), true},
		{"2024-02-29 13:45:56.5+02", kTimestamptz, us(time.Date(2024, 2, 29, 11, 45, 56, 5e8, time.UTC)), true},
		{"2024-02-29 13:45:56-03:30", kTimestamptz, us(time.Date(2024, 2, 29, 17, 15, 56, 0, time.UTC)), true},
		{"1800-01-01 00:00:00+00:53:28", kTimestamptz, us(time.Date(1799, 12, 31, 23, 6, 32, 0, time.UTC)), true},
		{"0044-03-15 12:00:00+00 BC", kTimestamptz, us(time.Date(-43, 3, 15, 12, 0, 0, 0, time.UTC)), true},
		{"1969-12-31 23:59:59.999999", kTimestamp, -1, true},
		{"294276-12-31 23:59:59.999999", kTimestamp, math.MaxInt64, true},
		{"infinity", kTimestamptz, math.MaxInt64, true},
		{"-infinity", kTimestamp, math.MinInt64, true},
		{"2024-02-29 13:45:56", kTimestamptz, 0, false}, // no offset
		{"2024-02-29 13:45:56+02", kTimestamp, 0, false},
		{"2024-02-29T13:45:56", kTimestamp, 0, false},
		{"2024-02-29 13:45:56.1234567", kTimestamp, 0, false},
	} {
		var got int64
		var ok bool
		switch c.kind {
		case kDate:
			got, ok = parseDate([]byte(c.in))
		case kTime:
			got, ok = parseTime([]byte(c.in))
		default:
			got, ok = parseTimestamp([]byte(c.in), c.kind == kTimestamptz)
		}
		if ok != c.wantOK || (ok && got != c.want) {
			t.Errorf("%s %q: %d, %v; want %d, %v", kindName(c.kind), c.in, got, ok, c.want, c.wantOK)
		}
	}
}

func FuzzTemporal(f *testing.F) {
	for _, s := range []string{"2024-02-29", "13:45:56.123", "2024-02-29 13:45:56.5+02:30 BC", "infinity", "5874897-12-31"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		b := []byte(s)
		parseDate(b)
		parseTime(b)
		parseTimestamp(b, false)
		parseTimestamp(b, true)
		parseInt(b)
		decodeBytea(b)
	})
}

// TestAvroEncoding checks the adapter's Avro binary against hamba/avro, for
// every kind and for arrays whose count prefix takes several bytes.
func TestAvroEncoding(t *testing.T) {
	long := make([]string, 100)
	var want []any
	for i := range long {
		long[i] = fmt.Sprint(i)
		want = append(want, i)
	}
	for _, c := range []struct {
		t    colType
		text string
		want any
	}{
		{colType{kind: kInt}, "-2147483648", math.MinInt32},
		{colType{kind: kLong}, "9223372036854775807", int64(math.MaxInt64)},
		{colType{kind: kFloat}, "-3.5", float32(-3.5)},
		{colType{kind: kDouble}, "Infinity", math.Inf(1)},
		{colType{kind: kBool}, "t", true},
		{colType{kind: kString}, "héllo", "héllo"},
		{colType{kind: kUUID}, "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11", "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"},
		{colType{kind: kBytes}, `\x00ff`, []byte{0, 0xff}},
		{colType{kind: kTime}, "00:00:01", time.Second},
		{colType{kind: kTimestamptz}, "1970-01-01 00:00:01+00", time.Unix(1, 0).UTC()},
		{colType{kind: kInt, array: true}, "{" + strings.Join(long, ",") + "}", want},
		{colType{kind: kInt, array: true}, "{}", []any{}},
		{colType{kind: kString, array: true}, `{a,NULL}`, []any{"a", nil}},
	} {
		sch := `{"type":"record","name":"r","fields":[{"name":"v","type":` + string(c.t.avroType()) + `}]}`
		codec, err := schema.NewCodec([]byte(sch))
		if err != nil {
			t.Fatal(err)
		}
		b, err := appendValue([]byte{0xAA}, c.t, []byte(c.text))
		if err != nil {
			t.Fatalf("%s: %v", c.text, err)
		}
		if b[0] != 0xAA {
			t.Fatal("appendValue overwrote dst")
		}
		row, err := codec.Decode(b[1:])
		if err != nil {
			t.Fatalf("%s: decode: %v", c.text, err)
		}
		if diff := cmp.Diff(c.want, unwrap(row["v"])); diff != "" {
			t.Errorf("%s (-want +got):\n%s", c.text, diff)
		}
	}
	for _, c := range []struct {
		t    colType
		text string
	}{
		{colType{kind: kInt}, "2147483648"},
		{colType{kind: kLong}, "9223372036854775808"},
		{colType{kind: kLong}, "-"},
		{colType{kind: kBool}, "yes"},
		{colType{kind: kBytes}, `\x0`},
		{colType{kind: kBytes}, `abc`},
		{colType{kind: kFloat}, "1e40x"},
		{colType{kind: kInt, array: true}, "{1,x}"},
		{colType{kind: kInt, array: true}, "{1"},
	} {
		if _, err := appendValue(nil, c.t, []byte(c.text)); !errors.Is(err, errValue) {
			t.Errorf("%s %q: %v, want errValue", kindName(c.t.kind), c.text, err)
		}
	}
}

func TestConfigValidate(t *testing.T) {
	good := Config{ConnString: "postgres://u:p@localhost/db", Tables: []string{"public.t"}, StateDir: "/tmp/x"}
	if err := good.Validate(); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		mod   func(*Config)
		field string
	}{
		{func(c *Config) { c.ConnString = "" }, "ConnString"},
		{func(c *Config) { c.ConnString = "postgres://u:hunter2@[::1" }, "ConnString"},
		{func(c *Config) { c.Tables = nil }, "Tables"},
		{func(c *Config) { c.Tables = []string{"t"} }, "Tables[0]"},
		{func(c *Config) { c.Tables = []string{"public.t", "public.t"} }, "Tables[1]"},
		{func(c *Config) { c.Tables = []string{"a.b.c"} }, "Tables[0]"},
		{func(c *Config) { c.Slot = "Bad-Slot" }, "Slot"},
		{func(c *Config) { c.Publication = `a"b` }, "Publication"},
		{func(c *Config) { c.StateDir = "" }, "StateDir"},
		{func(c *Config) { c.HeartbeatInterval = -1 }, "HeartbeatInterval"},
		{func(c *Config) { c.StatusInterval = time.Microsecond }, "StatusInterval"},
		{func(c *Config) { c.MinBackoff, c.MaxBackoff = time.Minute, time.Second }, "MinBackoff"},
		{func(c *Config) { c.MaxBackoff = -1 }, "MaxBackoff"},
		{func(c *Config) { c.ProtocolVersion = 3 }, "ProtocolVersion"},
		{func(c *Config) { c.ChunkBytes = 4095 }, "ChunkBytes"},
		{func(c *Config) { c.ChunkEvents = -1 }, "ChunkEvents"},
	} {
		cfg := good
		c.mod(&cfg)
		err := cfg.Validate()
		if !errors.Is(err, ErrConfig) || !strings.Contains(err.Error(), c.field) {
			t.Errorf("%s: %v", c.field, err)
		}
		if err != nil && strings.Contains(err.Error(), "hunter2") {
			t.Errorf("the password shows in %v", err)
		}
	}
	d := good.withDefaults()
	if d.Slot != "databus" || d.Publication != "databus" || d.HeartbeatInterval != time.Second || !d.createSlot() || !d.createPublication() ||
		d.ChunkBytes != DefaultChunkBytes || d.ChunkEvents != DefaultChunkEvents {
		t.Fatalf("defaults: %+v", d)
	}
	b, _ := json.Marshal(good)
	if strings.Contains(string(b), "u:p@") || strings.Contains(fmt.Sprint(good), "u:p@") {
		t.Fatalf("the connection string shows: %s", b)
	}
}

func TestSchemaStore(t *testing.T) {
	dir := t.TempDir()
	st, err := openSchemaStore(dir)
	if err != nil {
		t.Fatal(err)
	}
	col := func(name string) schema.Column {
		return schema.Column{Name: name, Avro: schema.Primitive("int"), Nullable: true, SourceType: "integer"}
	}
	v1 := schema.Table{Name: "public.t", Columns: []schema.Column{col("id")}, Key: []string{"id"}}
	arr := schema.Column{Name: "a", Avro: colType{kind: kTimestamptz, array: true}.avroType(), Nullable: true, SourceType: "timestamp with time zone[]"}
	v2 := schema.Table{Name: "public.t", Columns: []schema.Column{col("id"), arr}, Key: []string{"id"}}
	u1 := schema.Table{Name: "public.u", Columns: []schema.Column{col("k")}, Key: []string{"k"}}
	r1, err := st.resolve(v1)
	if err != nil || r1.ID != 1 || r1.Version != 1 {
		t.Fatalf("v1: %+v %v", r1, err)
	}
	r2, err := st.resolveRelation("public.t", "rel2", func() (schema.Table, error) { return v2, nil })
	if err != nil || r2.ID != 1 || r2.Version != 2 {
		t.Fatalf("v2: %+v %v", r2, err)
	}
	ru, _ := st.resolve(u1)
	if ru.ID != 2 || ru.Version != 1 {
		t.Fatalf("u1: %+v", ru)
	}
	// A known relation digest needs no build.
	if r, err := st.resolveRelation("public.t", "rel2", func() (schema.Table, error) { return schema.Table{}, errors.New("built") }); err != nil || r.Version != 2 {
		t.Fatalf("known relation: %+v %v", r, err)
	}
	if err := st.recordCommit(100, []idVersion{{1, 1}, {1, 2}, {2, 1}}); err != nil {
		t.Fatal(err)
	}
	if err := st.recordCommit(200, []idVersion{{1, 1}}); err != nil {
		t.Fatal(err)
	}
	check := func(st *schemaStore) {
		t.Helper()
		for _, c := range []struct {
			id   uint32
			at   uint64
			want uint16
			ok   bool
		}{{1, 100, 0, false}, {1, 101, 2, true}, {1, 200, 2, true}, {1, 201, 1, true}, {2, 150, 1, true}, {3, 1, 0, false}} {
			if v, ok := st.versionBefore(c.id, c.at); v != c.want || ok != c.ok {
				t.Errorf("versionBefore(%d, %d) = %d, %v; want %d, %v", c.id, c.at, v, ok, c.want, c.ok)
			}
		}
		if tb, ok := st.table(1, 2); !ok || len(tb.Columns) != 2 {
			t.Errorf("table(1, 2) = %+v, %v", tb, ok)
		}
	}
	check(st)
	// Reopened: the same ids, versions and transitions.
	st2, err := openSchemaStore(dir)
	if err != nil {
		t.Fatal(err)
	}
	check(st2)
	if r, _ := st2.resolve(v2); r.Version != 2 {
		t.Fatalf("reopened v2: %+v", r)
	}
	// Reloaded tables are byte for byte what the adapter builds.
	if tb, _ := st2.table(1, 2); string(tb.Columns[1].Avro) != string(arr.Avro) {
		t.Fatalf("reloaded Avro type %s, built %s", tb.Columns[1].Avro, arr.Avro)
	}
	// Re-recording the same transitions changes nothing; other ones replace.
	if err := st2.recordCommit(100, []idVersion{{1, 2}}); err != nil {
		t.Fatal(err)
	}
	if v, _ := st2.versionBefore(1, 150); v != 2 {
		t.Fatalf("after re-record: %d", v)
	}
	path := filepath.Join(dir, schemaFile)
	if err := os.WriteFile(path, []byte(`{"format":9}`), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := openSchemaStore(dir); err == nil || !strings.Contains(err.Error(), "format 9") {
		t.Fatalf("format 9: %v", err)
	}
	if err := os.WriteFile(path, []byte(`{`), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := openSchemaStore(dir); err == nil || !strings.Contains(err.Error(), "corrupt") {
		t.Fatalf("corrupt: %v", err)
	}
}

func TestPingStorm(t *testing.T) {
	var p pingStorm
	now := time.Now()
	for i := range 4 {
		if p.waiting(now.Add(time.Duration(i)*time.Millisecond), 10, 20) {
			t.Fatalf("storm after %d pings", i+1)
		}
	}
	if !p.waiting(now.Add(5*time.Millisecond), 10, 20) {
		t.Fatal("no storm after 5 pings in 5ms")
	}
	// Pings spread out, or answered with everything confirmed: no storm.
	p = pingStorm{}
	for i := range 20 {
		if p.waiting(now.Add(time.Duration(i)*time.Second), 10, 20) {
			t.Fatal("storm from slow pings")
		}
	}
	p = pingStorm{}
	for range 20 {
		if p.waiting(now, 20, 20) {
			t.Fatal("storm while confirmed")
		}
	}
}

func TestErrors(t *testing.T) {
	lost := &SlotLostError{Slot: "s", Reason: "invalidated", SCN: 1 << 32}
	if !strings.Contains(lost.Error(), "wal_status lost") || !strings.Contains(lost.Error(), "1/0") {
		t.Fatal(lost.Error())
	}
	for _, c := range []struct {
		err  error
		want bool
	}{
		{errors.New("connection reset"), true},
		{errServerWaits, true},
		{lost, false},
		{&SettingError{}, false},
		{fmt.Errorf("x: %w", ErrDecode), false},
		{fmt.Errorf("x: %w", errStore), false},
	} {
		if got := retryable(c.err); got != c.want {
			t.Errorf("retryable(%v) = %v", c.err, got)
		}
	}
	if got := quotePublication(`it's`); got != `"it''s"` {
		t.Fatalf("quotePublication: %s", got)
	}
	if lsnString(0x16_B374D848) != "16/B374D848" {
		t.Fatal(lsnString(0x16_B374D848))
	}
}
