package eventjson

import (
	"encoding/json"
	"testing"

	"github.com/databus-go/databus/event"
	"github.com/databus-go/databus/schema"
	"github.com/google/go-cmp/cmp"
)

func TestAppend(t *testing.T) {
	reg := schema.NewRegistry()
	entry, err := reg.Put(schema.Table{ID: 3, Name: "main.t", Version: 1, Key: []string{"k\x00"}, Columns: []schema.Column{
		{Name: "k\x00", Avro: schema.Primitive("string")},
		{Name: "b", Avro: schema.Primitive("bytes"), Nullable: true},
	}})
	if err != nil {
		t.Fatal(err)
	}
	after, _ := entry.Codec.Encode(map[string]any{"k_": "é\x00", "b": []byte{1, 2}})
	before, _ := entry.Codec.Encode(map[string]any{"k_": "é\x00", "b": nil})
	e := event.Event{Kind: event.KindData, Op: event.OpUpdate, SCN: 7, Timestamp: 1500, Source: 3, SchemaVersion: 1,
		Key: event.AppendKeyString(nil, "é\x00"), Payload: after, Before: before, HasBefore: true}
	line := Append(nil, &e, reg)
	var got map[string]any
	if err := json.Unmarshal(line, &got); err != nil {
		t.Fatalf("not JSON: %s: %v", line, err)
	}
	want := map[string]any{"scn": 7.0, "source": "main.t", "op": "update", "key": map[string]any{"k\x00": "é\x00"},
		"ts": "1970-01-01T00:00:00.0000015Z", "schemaVersion": 1.0,
		"row": map[string]any{"k\x00": "é\x00", "b": "AQI="}, "before": map[string]any{"k\x00": "é\x00", "b": nil}}
	if d := cmp.Diff(want, got); d != "" {
		t.Errorf("(-want +got)\n%s", d)
	}
	eow := event.EndOfWindow(7, 1500, 1, "0-1-2")
	line = Append(nil, &eow, reg)
	if err := json.Unmarshal(line, &got); err != nil || got["endOfWindow"] != true || got["txid"] != "0-1-2" {
		t.Errorf("end of window rendered as %s (%v)", line, err)
	}
	e.SchemaVersion = 9
	line = Append(nil, &e, reg)
	if err := json.Unmarshal(line, &got); err != nil || got["error"] == nil || got["rowAvro"] == nil || got["source"] != "main.t" {
		t.Errorf("an event of an unknown schema version rendered as %s (%v)", line, err)
	}
}
