package sqlite

import (
	"encoding/hex"
	"encoding/json"
	"fmt"
	"math"
	"strconv"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"pgregory.net/rapid"

	"github.com/databus-go/databus/event"
	"github.com/databus-go/databus/schema"
)

// TestEncodeMatchesCodec checks that the source's direct Avro encoding is
// byte-identical to what schema.Codec produces for the same row, and that
// the image parser reads back what imageExpr's format describes.
func TestEncodeMatchesCodec(t *testing.T) {
	rapid.Check(t, func(t *rapid.T) {
		n := rapid.IntRange(1, 6).Draw(t, "columns")
		tb := schema.Table{ID: 1, Name: "main.r", Version: 1}
		kinds := []kind{kLong, kDouble, kString, kBytes, kBool}
		var image []string
		row := map[string]any{}
		for i := range n {
			k := rapid.SampledFrom(kinds).Draw(t, "kind")
			nullable := rapid.Bool().Draw(t, "nullable")
			name := fmt.Sprintf("c %d", i)
			tb.Columns = append(tb.Columns, schema.Column{Name: name, Avro: schema.Primitive(k.String()), Nullable: nullable})
			if nullable && rapid.IntRange(0, 4).Draw(t, "null") == 0 {
				image = append(image, "null")
				row[schema.FieldName(name)] = nil
				continue
			}
			var v any
			switch k {
			case kLong:
				x := rapid.Int64().Draw(t, "long")
				v, image = x, append(image, strconv.FormatInt(x, 10))
			case kBool:
				x := rapid.Bool().Draw(t, "bool")
				b := 0
				if x {
					b = 1
				}
				v, image = x, append(image, strconv.Itoa(b))
			case kDouble:
				x := math.Float64frombits(rapid.Uint64().Draw(t, "bits"))
				if math.IsNaN(x) {
					x = 0.5
				}
				v, image = x, append(image, `"r`+strconv.FormatFloat(x, 'g', 17, 64)+`"`)
			case kString:
				x := rapid.String().Draw(t, "string")
				j, _ := json.Marshal("t" + x)
				v, image = x, append(image, string(j))
			case kBytes:
				x := rapid.SliceOf(rapid.Byte()).Draw(t, "bytes")
				v, image = x, append(image, `"b`+strings.ToUpper(hex.EncodeToString(x))+`"`)
			}
			row[schema.FieldName(name)] = v
		}
		tb.Key = []string{tb.Columns[0].Name}
		def, _ := json.Marshal(tb)
		ver, err := compileVersion(def)
		if err != nil {
			t.Fatal(err)
		}
		var d imageDecoder
		vals, err := d.parse("[" + strings.Join(image, ",") + "]")
		if err != nil {
			t.Fatalf("parse: %v", err)
		}
		var conv []value
		avro, _, bad, _, err := ver.encodeRow(vals, nil, nil, &conv)
		if err != nil || bad >= 0 {
			t.Fatalf("encodeRow: %v, bad column %d", err, bad)
		}
		codec, err := schema.NewCodec(tb.AvroSchema())
		if err != nil {
			t.Fatal(err)
		}
		want, err := codec.Encode(row)
		if err != nil {
			t.Fatal(err)
		}
		if string(avro) != string(want) {
			t.Fatalf("encoding differs:\n got %x\nwant %x", avro, want)
		}
		got, err := codec.Decode(avro)
		if err != nil {
			t.Fatal(err)
		}
		if d := cmp.Diff(row, got, cmp.Comparer(floatBits)); d != "" {
			t.Fatalf("round trip (-want +got):\n%s", d)
		}
	})
}

func TestParseImage(t *testing.T) {
	var d imageDecoder
	vals, err := d.parse(`[null,-9223372036854775808,"r-0.5","ta\u0000\"\\\/\b\f\n\r\t\ud83d\ude80é","b00FF",""]`)
	if err == nil {
		t.Fatalf("an empty string element was accepted: %v", vals)
	}
	vals, err = d.parse(`[null,-9223372036854775808,"r-0.5","ta\u0000\"\\\/\b\f\n\r\t\ud83d\ude80é","b00FF","t"]`)
	if err != nil {
		t.Fatal(err)
	}
	want := []value{{class: 'n'}, {class: 'i', i: math.MinInt64}, {class: 'r', f: -0.5},
		{class: 't', b: []byte("a\x00\"\\/\b\f\n\r\t🚀é")}, {class: 'b', b: []byte{0, 0xff}}, {class: 't', b: []byte{}}}
	if d := cmp.Diff(want, vals, cmp.AllowUnexported(value{})); d != "" {
		t.Errorf("(-want +got):\n%s", d)
	}
	for _, bad := range []string{``, `[`, `[1,]`, `[1 ]`, `[x]`, `["q"]`, `["r1.5x"]`, `["b0"]`, `["t\ud83d"]`, `[99999999999999999999]`, `[1]x`, `["t`, `["t\`} {
		if _, err := d.parse(bad); err == nil {
			t.Errorf("parse(%q) succeeded", bad)
		}
	}
	if vals, err := d.parse(`[]`); err != nil || len(vals) != 0 {
		t.Errorf("parse([]) = %v, %v", vals, err)
	}
}

// FuzzParseImage checks that the image parser never panics and that a
// parsed image's text and blob values stay within its input.
func FuzzParseImage(f *testing.F) {
	for _, s := range []string{`[null,1,"r0.1","tx","b00"]`, `["t\u0000"]`, `[]`, `["b"]`} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		var d imageDecoder
		vals, err := d.parse(s)
		if err != nil {
			return
		}
		n := 0
		for _, v := range vals {
			n += len(v.b)
		}
		if n > len(s) {
			t.Fatalf("%d value bytes from %d input bytes", n, len(s))
		}
	})
}

func TestKeyEncoding(t *testing.T) {
	for _, tc := range []struct {
		v    value
		k    kind
		want []byte
	}{
		{value{class: 'i', i: -5}, kLong, event.AppendKeyInt(nil, -5)},
		{value{class: 'i', i: 1}, kBool, event.AppendKeyInt(nil, 1)},
		{value{class: 'r', f: 0.1}, kDouble, event.AppendKeyString(nil, "0.1")},
		{value{class: 't', b: []byte("é")}, kString, event.AppendKeyString(nil, "é")},
		{value{class: 'b', b: []byte{0}}, kBytes, event.AppendKeyBytes(nil, []byte{0})},
		{value{class: 'n'}, kString, event.AppendKeyNull(nil)},
	} {
		if got := appendKey(nil, tc.v, tc.k); string(got) != string(tc.want) {
			t.Errorf("appendKey(%+v, %v) = %x, want %x", tc.v, tc.k, got, tc.want)
		}
	}
}

func TestColumnKind(t *testing.T) {
	for decl, want := range map[string]kind{
		"INTEGER": kLong, "int": kLong, "BIGINT UNSIGNED": kLong, "TINYINT(1)": kLong,
		"TEXT": kString, "VARCHAR(20)": kString, "NCHAR": kString, "CLOB": kString,
		"BLOB": kBytes, "": kBytes,
		"REAL": kDouble, "DOUBLE PRECISION": kDouble, "FLOAT": kDouble,
		"NUMERIC": kString, "DECIMAL(10,2)": kString, "DATETIME": kString, "ANY": kString,
		"BOOLEAN": kBool, "bool": kBool,
		"CHARINT": kLong, // INT wins, as in SQLite
	} {
		if got := columnKind(decl, false); got != want {
			t.Errorf("columnKind(%q) = %v, want %v", decl, got, want)
		}
	}
	if got := columnKind("ANY", true); got != kBytes {
		t.Errorf("STRICT ANY = %v", got)
	}
}
