package schema

import (
	"testing"

	"github.com/google/go-cmp/cmp"
)

func person(version uint16) Table {
	return Table{ID: 1, Name: "demo.person", Version: version, Key: []string{"id"}, Columns: []Column{
		{Name: "id", Avro: Primitive("long")},
		{Name: "full name", Avro: Primitive("string"), Nullable: true},
		{Name: "photo", Avro: Primitive("bytes"), Nullable: true},
		{Name: "score", Avro: Primitive("double"), Nullable: true},
	}}
}

func TestCodecRoundTrip(t *testing.T) {
	r := NewRegistry()
	e, err := r.Put(person(1))
	if err != nil {
		t.Fatal(err)
	}
	row := map[string]any{"id": int64(-9), "full_name": "Zoë 🚀", "photo": []byte{0, 1}, "score": nil}
	b, err := e.Codec.Encode(row)
	if err != nil {
		t.Fatal(err)
	}
	got, err := e.Codec.Decode(b)
	if err != nil {
		t.Fatal(err)
	}
	if d := cmp.Diff(row, got); d != "" {
		t.Errorf("round trip (-want +got):\n%s", d)
	}
	var s struct {
		ID   int64   `avro:"id"`
		Name *string `avro:"full_name"`
	}
	if err := e.Codec.DecodeInto(b, &s); err != nil || s.ID != -9 || *s.Name != "Zoë 🚀" {
		t.Errorf("DecodeInto = %+v, %v", s, err)
	}
	if _, err := e.Codec.Decode(b[:3]); err == nil {
		t.Error("decoding a truncated row succeeded")
	}
}

func TestRegistryVersions(t *testing.T) {
	r := NewRegistry()
	for _, v := range []uint16{2, 1} {
		if _, err := r.Put(person(v)); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := r.Put(person(1)); err != nil {
		t.Errorf("re-registering an identical version: %v", err)
	}
	changed := person(1)
	changed.Columns = changed.Columns[:2]
	if _, err := r.Put(changed); err == nil {
		t.Error("a conflicting redefinition of version 1 was accepted")
	}
	other := person(1)
	other.ID = 2
	if _, err := r.Put(other); err == nil {
		t.Error("a second id for the same name was accepted")
	}
	if e, _ := r.Latest(1); e.Version != 2 {
		t.Errorf("latest version = %d", e.Version)
	}
	bad := person(3)
	bad.Key = []string{"nope"}
	if _, err := r.Put(bad); err == nil {
		t.Error("a key naming no column was accepted")
	}
}

func TestCodecLargeValues(t *testing.T) {
	p := person(1)
	c, err := NewCodec(p.AvroSchema())
	if err != nil {
		t.Fatal(err)
	}
	big := make([]byte, 16<<20)
	big[len(big)-1] = 7
	b, err := c.Encode(map[string]any{"id": int64(1), "full_name": nil, "photo": big, "score": nil})
	if err != nil {
		t.Fatal(err)
	}
	row, err := c.Decode(b)
	if err != nil {
		t.Fatalf("a 16 MiB value does not decode: %v", err)
	}
	if got := row["photo"].([]byte); len(got) != len(big) || got[len(got)-1] != 7 {
		t.Errorf("decoded %d bytes", len(got))
	}
}

func TestAppendPrimitives(t *testing.T) {
	c, err := NewCodec([]byte(`{"type":"record","name":"r","fields":[{"name":"l","type":"long"},{"name":"s","type":"string"},{"name":"b","type":"bytes"}]}`))
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range []int64{0, -1, 1, -1 << 63, 1<<63 - 1} {
		b := AppendBytes(AppendBytes(AppendLong(nil, l), "é🚀"), []byte{0, 1})
		row, err := c.Decode(b)
		if err != nil || row["l"] != l || row["s"] != "é🚀" || string(row["b"].([]byte)) != "\x00\x01" {
			t.Errorf("long %d: decoded %v, %v", l, row, err)
		}
	}
}
