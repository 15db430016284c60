// Package schema describes logical sources (tables) and their versioned Avro
// schemas, and hides the Avro library behind a small codec.
//
// A [Table] is one version of a logical source's definition as a source
// adapter read it from the database's log (or catalog, for SQLite). Its Avro
// schema is a record with one field per column, in column order; a nullable
// column is the union ["null", T]. The [Registry] keeps every version ever
// seen, so an event is always decoded with the version it was written with.
package schema

import (
	"encoding/json"
	"errors"
	"fmt"
	"regexp"
	"sort"
	"sync"

	"github.com/hamba/avro/v2"

	"github.com/databus-go/databus/event"
)

// Column is one column of a table.
type Column struct {
	Name string `json:"name"`
	// Avro is the column's Avro type without nullability: a primitive name
	// ("long", "double", "string", "bytes", "boolean", ...) or a JSON type
	// object for logical types.
	Avro json.RawMessage `json:"avro"`
	// Nullable columns are encoded as the union ["null", Avro].
	Nullable bool `json:"nullable"`
	// SourceType is the column type as the source declared it, for people.
	SourceType string `json:"sourceType,omitempty"`
}

// Table is one version of a logical source's schema.
//
// Invariant: every name in Key is the name of a column.
type Table struct {
	ID      uint32   `json:"id"`
	Name    string   `json:"name"` // db.table or schema.table
	Version uint16   `json:"version"`
	Columns []Column `json:"columns"`
	Key     []string `json:"key"`
}

// Primitive returns the Avro type JSON of a primitive type name.
func Primitive(name string) json.RawMessage { return json.RawMessage(`"` + name + `"`) }

var nonName = regexp.MustCompile(`[^A-Za-z0-9_]`)

// avroName turns a column or table name into a valid Avro name.
func avroName(s string) string {
	s = nonName.ReplaceAllString(s, "_")
	if s == "" || (s[0] >= '0' && s[0] <= '9') {
		s = "_" + s
	}
	return s
}

// ErrInvalid is wrapped by the errors Validate returns.
var ErrInvalid = errors.New("databus: invalid table schema")

// Validate checks the invariants of t.
func (t *Table) Validate() error {
	if t.Name == "" {
		return fmt.Errorf("%w: empty name", ErrInvalid)
	}
	if len(t.Columns) == 0 {
		return fmt.Errorf("%w: %s has no columns", ErrInvalid, t.Name)
	}
	seen := map[string]bool{}
	for _, c := range t.Columns {
		n := avroName(c.Name)
		if seen[n] {
			return fmt.Errorf("%w: %s has two columns named %q after Avro name mangling", ErrInvalid, t.Name, n)
		}
		seen[n] = true
	}
	if len(t.Key) == 0 {
		return fmt.Errorf("%w: %s has no key columns", ErrInvalid, t.Name)
	}
	for _, k := range t.Key {
		if t.Column(k) < 0 {
			return fmt.Errorf("%w: key column %q of %s is not a column", ErrInvalid, k, t.Name)
		}
	}
	return nil
}

// Column returns the index of the named column, or -1.
func (t *Table) Column(name string) int {
	for i, c := range t.Columns {
		if c.Name == name {
			return i
		}
	}
	return -1
}

// AvroType returns the type name and logical type of a column's Avro type
// JSON: "long" gives ("long", ""); {"type":"long","logicalType":"timestamp-micros"}
// gives ("long", "timestamp-micros"); anything else gives ("", "").
func AvroType(raw json.RawMessage) (typ, logical string) {
	var s string
	if json.Unmarshal(raw, &s) == nil {
		return s, ""
	}
	var o struct {
		Type        any    `json:"type"`
		LogicalType string `json:"logicalType"`
	}
	if json.Unmarshal(raw, &o) == nil {
		if t, ok := o.Type.(string); ok {
			return t, o.LogicalType
		}
	}
	return "", ""
}

// IntegerKey reports whether t's key is a single column of Avro type int or
// long without a logical type: the only keys RANGE partitions can order.
func (t *Table) IntegerKey() bool {
	if len(t.Key) != 1 {
		return false
	}
	i := t.Column(t.Key[0])
	if i < 0 {
		return false
	}
	typ, logical := AvroType(t.Columns[i].Avro)
	return logical == "" && (typ == "long" || typ == "int")
}

// FieldName returns the Avro field name of a column: the column name with
// characters Avro does not allow replaced by '_'. Rows passed to and returned
// by a Codec are keyed by field name.
func FieldName(column string) string { return avroName(column) }

// AvroSchema returns the Avro record schema of t as JSON.
func (t *Table) AvroSchema() json.RawMessage {
	type field struct {
		Name    string          `json:"name"`
		Type    json.RawMessage `json:"type"`
		Doc     string          `json:"doc,omitempty"`
		Default any             `json:"default,omitempty"`
	}
	fields := make([]field, 0, len(t.Columns))
	for _, c := range t.Columns {
		typ := c.Avro
		if c.Nullable {
			typ = json.RawMessage(`["null",` + string(c.Avro) + `]`)
		}
		fields = append(fields, field{Name: avroName(c.Name), Type: typ, Doc: c.SourceType})
	}
	b, _ := json.Marshal(map[string]any{
		"type":      "record",
		"name":      avroName(t.Name),
		"namespace": "databus",
		"fields":    fields,
	})
	return b
}

// Codec encodes and decodes rows of one table version. It is safe for
// concurrent use.
type Codec struct {
	schema avro.Schema
}

// avroAPI raises hamba/avro's 1 MiB default bound on a decoded bytes or
// string value to the largest frame databus carries, so that a 16 MiB BLOB
// decodes; the frame bound still keeps a corrupt length from allocating
// without limit.
var avroAPI = avro.Config{MaxByteSliceSize: event.MaxFrameSize, MaxSliceAllocSize: event.MaxFrameSize}.Freeze()

// NewCodec compiles an Avro record schema.
func NewCodec(avroSchema []byte) (*Codec, error) {
	s, err := avro.Parse(string(avroSchema))
	if err != nil {
		return nil, fmt.Errorf("databus: avro schema: %w", err)
	}
	return &Codec{schema: s}, nil
}

// Encode returns the Avro binary of row, keyed by field name. Values must
// have the Go types the Avro types map to (int64 for long, float64 for
// double, string, []byte, bool, nil for a null column).
func (c *Codec) Encode(row map[string]any) ([]byte, error) {
	b, err := avroAPI.Marshal(c.schema, row)
	if err != nil {
		return nil, fmt.Errorf("databus: encode row: %w", err)
	}
	return b, nil
}

// Decode returns the row as a map keyed by field name.
func (c *Codec) Decode(b []byte) (map[string]any, error) {
	var m map[string]any
	if err := avroAPI.Unmarshal(c.schema, b, &m); err != nil {
		return nil, fmt.Errorf("databus: decode row: %w", err)
	}
	return m, nil
}

// DecodeInto decodes the row into v, a pointer to a struct whose fields are
// tagged `avro:"field"`; nullable columns need pointer fields.
func (c *Codec) DecodeInto(b []byte, v any) error {
	if err := avroAPI.Unmarshal(c.schema, b, v); err != nil {
		return fmt.Errorf("databus: decode row: %w", err)
	}
	return nil
}

// Entry is a registered table version with its compiled codec.
type Entry struct {
	Table
	Codec *Codec
}

// Registry holds every version of every logical source's schema. It is safe
// for concurrent use; entries are immutable once registered.
type Registry struct {
	mu     sync.RWMutex
	byID   map[uint32][]*Entry // versions in ascending order
	byName map[string]uint32
}

// NewRegistry returns an empty registry.
func NewRegistry() *Registry {
	return &Registry{byID: map[uint32][]*Entry{}, byName: map[string]uint32{}}
}

// Put registers a table version. Registering the same id and version again
// is a no-op when the definition is identical and an error otherwise, as is
// reusing a name for another id.
func (r *Registry) Put(t Table) (*Entry, error) {
	if err := t.Validate(); err != nil {
		return nil, err
	}
	codec, err := NewCodec(t.AvroSchema())
	if err != nil {
		return nil, err
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if id, ok := r.byName[t.Name]; ok && id != t.ID {
		return nil, fmt.Errorf("%w: %s has id %d, not %d", ErrInvalid, t.Name, id, t.ID)
	}
	vs := r.byID[t.ID]
	for _, e := range vs {
		if e.Version == t.Version {
			a, _ := json.Marshal(e.Table)
			b, _ := json.Marshal(t)
			if string(a) != string(b) {
				return nil, fmt.Errorf("%w: %s version %d registered twice with different definitions", ErrInvalid, t.Name, t.Version)
			}
			return e, nil
		}
	}
	e := &Entry{Table: t, Codec: codec}
	vs = append(vs, e)
	sort.Slice(vs, func(i, j int) bool { return vs[i].Version < vs[j].Version })
	r.byID[t.ID] = vs
	r.byName[t.Name] = t.ID
	return e, nil
}

// Get returns the given version of a source.
func (r *Registry) Get(id uint32, version uint16) (*Entry, bool) {
	r.mu.RLock()
	defer r.mu.RUnlock()
	for _, e := range r.byID[id] {
		if e.Version == version {
			return e, true
		}
	}
	return nil, false
}

// Latest returns the newest version of a source.
func (r *Registry) Latest(id uint32) (*Entry, bool) {
	r.mu.RLock()
	defer r.mu.RUnlock()
	vs := r.byID[id]
	if len(vs) == 0 {
		return nil, false
	}
	return vs[len(vs)-1], true
}

// Lookup returns the id of a source by name.
func (r *Registry) Lookup(name string) (uint32, bool) {
	r.mu.RLock()
	defer r.mu.RUnlock()
	id, ok := r.byName[name]
	return id, ok
}

// Versions returns every version of a source, oldest first.
func (r *Registry) Versions(id uint32) []*Entry {
	r.mu.RLock()
	defer r.mu.RUnlock()
	return append([]*Entry(nil), r.byID[id]...)
}

// Latests returns the newest version of every source, by id.
func (r *Registry) Latests() []*Entry {
	r.mu.RLock()
	defer r.mu.RUnlock()
	out := make([]*Entry, 0, len(r.byID))
	for _, vs := range r.byID {
		out = append(out, vs[len(vs)-1])
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out
}

// ChangeOf returns the schema-change payload that announces t, columns
// included, for event.NewSchemaChange.
func ChangeOf(t Table) event.SchemaChange {
	cols, _ := json.Marshal(t.Columns) // columns always marshal
	return event.SchemaChange{Source: t.ID, Name: t.Name, Version: t.Version, Key: t.Key, Avro: t.AvroSchema(), Columns: cols}
}

// FromChange returns the table version a schema-change payload announces.
// A payload without columns (from a writer that sent only the Avro record)
// is rebuilt from the record: one column per field, nullable when its type
// is a union with "null" first, the source type from the field's doc; the
// column names are then the Avro field names.
func FromChange(sc event.SchemaChange) (Table, error) {
	t := Table{ID: sc.Source, Name: sc.Name, Version: sc.Version}
	if len(sc.Columns) > 0 {
		if err := json.Unmarshal(sc.Columns, &t.Columns); err != nil {
			return Table{}, fmt.Errorf("%w: schema change columns: %v", ErrInvalid, err)
		}
	} else {
		var rec struct {
			Type   string `json:"type"`
			Fields []struct {
				Name string          `json:"name"`
				Type json.RawMessage `json:"type"`
				Doc  string          `json:"doc"`
			} `json:"fields"`
		}
		if err := json.Unmarshal(sc.Avro, &rec); err != nil {
			return Table{}, fmt.Errorf("%w: schema change avro: %v", ErrInvalid, err)
		}
		if rec.Type != "record" {
			return Table{}, fmt.Errorf("%w: schema change avro of type %q, want record", ErrInvalid, rec.Type)
		}
		for _, f := range rec.Fields {
			c := Column{Name: f.Name, Avro: f.Type, SourceType: f.Doc}
			var union []json.RawMessage
			if json.Unmarshal(f.Type, &union) == nil && len(union) == 2 && string(union[0]) == `"null"` {
				c.Avro, c.Nullable = union[1], true
			}
			t.Columns = append(t.Columns, c)
		}
	}
	for _, k := range sc.Key {
		if t.Column(k) < 0 {
			k = FieldName(k)
		}
		t.Key = append(t.Key, k)
	}
	return t, t.Validate()
}
