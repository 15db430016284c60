package mysql

import (
	"encoding/json"
	"errors"
	"fmt"
	"math/big"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/databus-go/databus/schema"
	"github.com/databus-go/databus/source"
)

func TestConfigValidate(t *testing.T) {
	ok := Config{Host: "h", User: "u", StateDir: "/tmp/x"}
	if err := ok.Validate(); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		field string
		mut   func(*Config)
	}{
		{"Host", func(c *Config) { c.Host = "" }},
		{"Port", func(c *Config) { c.Port = 70000 }},
		{"User", func(c *Config) { c.User = "" }},
		{"StateDir", func(c *Config) { c.StateDir = "" }},
		{"Flavor", func(c *Config) { c.Flavor = "oracle" }},
		{"HeartbeatInterval", func(c *Config) { c.HeartbeatInterval = -time.Second }},
		{"MinBackoff", func(c *Config) { c.MinBackoff, c.MaxBackoff = time.Hour, time.Minute }},
		{"Include[1]", func(c *Config) { c.Include = []string{"a.b", "nodot"} }},
		{"Exclude[0]", func(c *Config) { c.Exclude = []string{".t"} }},
		{"HeartbeatTable", func(c *Config) { c.HeartbeatTable = "x" }},
		{"StartAt", func(c *Config) { c.StartAt = "middle" }},
	} {
		c := ok
		tc.mut(&c)
		err := c.Validate()
		if !errors.Is(err, ErrConfig) || !strings.Contains(err.Error(), tc.field) {
			t.Errorf("%s: %v", tc.field, err)
		}
	}
	d := ok.withDefaults()
	if d.Port != 3306 || d.ServerID != DefaultServerID || d.HeartbeatInterval != time.Second || d.StartAt != StartAtEnd {
		t.Fatalf("defaults: %+v", d)
	}
}

func TestSecretHidden(t *testing.T) {
	c := Config{Password: "hunter2"}
	b, _ := json.Marshal(c)
	for _, s := range []string{fmt.Sprintf("%v %+v %#v %s", c, c, c, c.Password), string(b)} {
		if strings.Contains(s, "hunter2") {
			t.Fatalf("secret in %q", s)
		}
	}
	var back Config
	if err := json.Unmarshal([]byte(`{"password":"pw"}`), &back); err != nil || back.Password != "pw" {
		t.Fatal(back, err)
	}
}

func TestFilter(t *testing.T) {
	f := newFilter(&Config{Include: []string{"shop.*", "*.audit_*"}, Exclude: []string{"shop.tmp*"}, HeartbeatTable: "shop.beat"})
	for _, tc := range []struct {
		db, table string
		want      bool
	}{
		{"shop", "orders", true}, {"shop", "tmp1", false}, {"shop", "beat", false},
		{"hr", "audit_x", true}, {"hr", "people", false}, {"mysql", "user", false}, {"Shop", "orders", false},
	} {
		if got := f.match(tc.db, tc.table); got != tc.want {
			t.Errorf("%s.%s: %v", tc.db, tc.table, got)
		}
	}
	all := newFilter(&Config{})
	if !all.match("a", "b") || all.match("sys", "x") {
		t.Fatal("empty include")
	}
	for _, tc := range []struct {
		p, s string
		want bool
	}{{"*", "", true}, {"a*b*c", "axxbyyc", true}, {"a*b*c", "axxbyy", false}, {"**", "x", true}, {"a", "ab", false}, {"*ab", "aab", true}} {
		if glob(tc.p, tc.s) != tc.want {
			t.Errorf("glob(%q, %q)", tc.p, tc.s)
		}
	}
}

func TestAppendDecimal(t *testing.T) {
	for _, tc := range []struct {
		s     string
		scale int
		want  string
	}{
		{"0", 0, "0"}, {"-1", 0, "-1"}, {"12.34", 2, "12.34"}, {"-0.05", 2, "-0.05"}, {"1.5", 3, "1.5"},
		{"99999999999999999999999999999999999.999999999999999999999999999999", 30, "99999999999999999999999999999999999.999999999999999999999999999999"},
		{"-99999999999999999999999999999999999.999999999999999999999999999999", 30, "-99999999999999999999999999999999999.999999999999999999999999999999"},
		{"-128", 0, "-128"}, {"127", 0, "127"}, {"128", 0, "128"}, {"-129", 0, "-129"}, {"18446744073709551615", 0, "18446744073709551615"},
	} {
		b, err := appendDecimal(nil, tc.s, tc.scale)
		if err != nil {
			t.Fatal(tc.s, err)
		}
		// Undo the Avro length prefix and read two's complement.
		n := int(b[0] >> 1)
		raw := b[1:]
		if len(raw) != n {
			t.Fatalf("%s: length %d != %d", tc.s, len(raw), n)
		}
		v := new(big.Int).SetBytes(raw)
		if raw[0]&0x80 != 0 {
			v.Sub(v, new(big.Int).Lsh(big.NewInt(1), uint(8*len(raw))))
		}
		got := new(big.Rat).SetFrac(v, new(big.Int).Exp(big.NewInt(10), big.NewInt(int64(tc.scale)), nil))
		want, _ := new(big.Rat).SetString(tc.want)
		if got.Cmp(want) != 0 {
			t.Errorf("%s: got %s", tc.s, got.FloatString(tc.scale))
		}
	}
	for _, bad := range []string{"", "1.2.3", "x", "1.234"} {
		if _, err := appendDecimal(nil, bad, 2); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}

func TestTemporalText(t *testing.T) {
	for _, tc := range []struct {
		s    string
		want int64
		ok   bool
	}{
		{"1970-01-01", 0, true}, {"2024-02-29", 19782, true}, {"0000-00-00", 0, false}, {"2024-00-15", 0, false},
		{"1000-01-01", -354285, true}, {"9999-12-31", 2932896, true}, {"0001-01-01", -719162, true},
	} {
		got, ok := parseDate(tc.s)
		if ok != tc.ok || (ok && got != tc.want) {
			t.Errorf("parseDate(%q) = %d %v", tc.s, got, ok)
		}
		if ok {
			if d, _ := time.Parse("2006-01-02", tc.s); d.Unix()/86400 != got {
				t.Errorf("parseDate(%q) = %d, time says %d", tc.s, got, d.Unix()/86400)
			}
		}
	}
	for _, s := range []string{"2038-01-19 03:14:07.999999", "1000-01-01 00:00:00", "2024-06-01 12:00:00.5", "0001-01-01 00:00:00.000001"} {
		got, ok := parseDatetime(s)
		d, _ := time.Parse("2006-01-02 15:04:05.999999", s)
		if !ok || got != d.UnixMicro() {
			t.Errorf("parseDatetime(%q) = %d %v, want %d", s, got, ok, d.UnixMicro())
		}
	}
	for _, s := range []string{"0000-00-00 00:00:00", "2024-01-01", "2024-01-01 00:00:00.1234567", "2024-01-01T00:00:00"} {
		if _, ok := parseDatetime(s); ok {
			t.Errorf("parseDatetime(%q) accepted", s)
		}
	}
	for _, tc := range []struct {
		s    string
		want int64
	}{{"00:00:00", 0}, {"-00:00:00.5", -500000}, {"838:59:59.000000", 3020399000000}, {"-838:59:59", -3020399000000}, {"01:02:03.04", 3723040000}} {
		if got, ok := parseTime(tc.s); !ok || got != tc.want {
			t.Errorf("parseTime(%q) = %d %v", tc.s, got, ok)
		}
	}
}

func TestTextConversions(t *testing.T) {
	if got := string(appendLatin1(nil, []byte{'a', 0xE9, 0x80, 0x9F, 0xFF})); got != "aé€Ÿÿ" {
		t.Fatalf("latin1: %q", got)
	}
	big := strings.Repeat("é", 100) // prefix needs two varint bytes after conversion
	got := appendLenPrefixed([]byte("x"), func(d []byte) []byte { return appendLatin1(d, []byte(strings.Repeat("\xe9", 100))) })
	want := schema.AppendBytes([]byte("x"), big)
	if string(got) != string(want) {
		t.Fatalf("appendLenPrefixed: %q", got)
	}
	labels, err := parseLabels(`enum('a','b''c','d\\e','')`)
	if err != nil || strings.Join(labels, "|") != `a|b'c|d\e|` {
		t.Fatalf("%q %v", labels, err)
	}
}

func TestPosition(t *testing.T) {
	p := posData{File: "binlog.000042", Pos: 1234, GTID: "0-1-9"}
	pos := p.position(makeSCN(42, 1234))
	var viaJSON posData
	if err := json.Unmarshal(pos.Data, &viaJSON); err != nil || viaJSON != p {
		t.Fatalf("%s: %v", pos.Data, err)
	}
	std, _ := json.Marshal(p)
	if string(std) != string(pos.Data) {
		t.Fatalf("%s != %s", pos.Data, std)
	}
	back, ok, err := decodePosition(pos)
	if err != nil || !ok || back != p {
		t.Fatal(back, ok, err)
	}
	if _, _, err := decodePosition(source.Position{SCN: 1, Data: pos.Data}); err == nil {
		t.Fatal("mismatched SCN accepted")
	}
	if _, ok, err := decodePosition(source.Position{}); ok || err != nil {
		t.Fatal("zero position")
	}
	if withNumber("mysql-bin.000009", 10) != "mysql-bin.000010" || withNumber("b.1", 1234567) != "b.1234567" {
		t.Fatal("withNumber")
	}
	if _, err := fileNumber("binlog"); err == nil {
		t.Fatal("fileNumber without suffix")
	}
	odd := posData{File: "bin\"log.1", Pos: 4}.position(makeSCN(1, 4))
	if !json.Valid(odd.Data) {
		t.Fatalf("%s", odd.Data)
	}
}

func FuzzDecodePosition(f *testing.F) {
	f.Add(uint64(0), []byte(`{"file":"binlog.000001","pos":4}`))
	f.Add(uint64(1<<32|4), []byte(`{"file":"binlog.000001","pos":4,"gtid":"0-1-1"}`))
	f.Add(uint64(7), []byte(`null`))
	f.Fuzz(func(t *testing.T, scn uint64, data []byte) {
		p, ok, err := decodePosition(source.Position{SCN: scn, Data: data})
		if err == nil && ok {
			n, err := fileNumber(p.File)
			if err != nil || (scn != 0 && makeSCN(n, p.Pos) != scn) {
				t.Fatalf("accepted %+v for scn %d", p, scn)
			}
		}
	})
}

// TestSchemaStore: ids and versions survive a reopen, and the announcement
// decisions of a re-read match the first read's.
func TestSchemaStore(t *testing.T) {
	dir := t.TempDir()
	st, err := openSchemaStore(dir)
	if err != nil {
		t.Fatal(err)
	}
	def := func(name string, cols ...string) schema.Table {
		tb := schema.Table{Name: name, Key: []string{cols[0]}}
		for _, c := range cols {
			tb.Columns = append(tb.Columns, schema.Column{Name: c, Avro: schema.Primitive("long")})
		}
		return tb
	}
	a1, _ := st.resolve(def("d.a", "id"))
	a2, _ := st.resolve(def("d.a", "id", "x"))
	b1, _ := st.resolve(def("d.b", "id"))
	again, _ := st.resolve(def("d.a", "id"))
	if a1.ID != 1 || a1.Version != 1 || a2.Version != 2 || b1.ID != 2 || again.Version != 1 {
		t.Fatalf("%+v %+v %+v %+v", a1, a2, b1, again)
	}
	// A stream: positions 10 (v1), 20 (v1), 30 (v2), 40 (v1 again).
	steps := []struct {
		at uint64
		v  uint16
	}{{10, 1}, {20, 1}, {30, 2}, {40, 1}}
	var first []bool
	cur := map[uint32]uint16{}
	for _, s := range steps {
		ann := false
		if v, ok := cur[1]; !ok || v != s.v {
			if ann, err = st.announce(1, "d.a", s.at, s.v); err != nil {
				t.Fatal(err)
			}
		}
		cur[1] = s.v
		first = append(first, ann)
	}
	if fmt.Sprint(first) != "[true false true true]" {
		t.Fatalf("first read: %v", first)
	}
	st2, err := openSchemaStore(dir)
	if err != nil {
		t.Fatal(err)
	}
	if got, _ := st2.resolve(def("d.a", "id", "x")); got.ID != 1 || got.Version != 2 {
		t.Fatalf("after reopen: %+v", got)
	}
	// Re-read from position 20: same decisions for 20, 30, 40.
	cur = map[uint32]uint16{}
	var again2 []bool
	for _, s := range steps[1:] {
		ann := false
		if v, ok := cur[1]; !ok || v != s.v {
			ann, _ = st2.announce(1, "d.a", s.at, s.v)
		}
		cur[1] = s.v
		again2 = append(again2, ann)
	}
	if fmt.Sprint(again2) != fmt.Sprint(first[1:]) {
		t.Fatalf("re-read %v, first read %v", again2, first[1:])
	}
	if v, ok := st2.versionAt("d.a", 35); !ok || v.Version != 2 {
		t.Fatalf("versionAt 35: %+v", v)
	}
	if v, ok := st2.versionAt("d.b", 35); !ok || v.Version != 1 {
		t.Fatalf("versionAt without transitions: %+v", v)
	}
	// A corrupt or future file is refused.
	os.WriteFile(filepath.Join(dir, schemaFile), []byte(`{"format":9}`), 0o644)
	if _, err := openSchemaStore(dir); err == nil || !strings.Contains(err.Error(), "format 9") {
		t.Fatalf("format 9: %v", err)
	}
}

func TestCleanError(t *testing.T) {
	err := cleanError(errors.New("connection was bad\ngithub.com/x.f\n\t/a/b.go:1\nio.ReadFull failed\ngithub.com/y.g\n\t/c.go:2"))
	if got := err.Error(); got != "connection was bad: io.ReadFull failed" {
		t.Fatalf("%q", got)
	}
	if s := fmt.Sprintf("%+v", err); strings.Contains(s, ".go:") {
		t.Fatalf("%q", s)
	}
	if !retryable(err) || retryable(&BinlogPurgedError{}) || retryable(fmt.Errorf("x: %w", ErrDecode)) {
		t.Fatal("retryable")
	}
}
