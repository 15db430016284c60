// Package eventjson renders frames as the JSON objects that people and
// non-Go clients read: the relay's format=json stream and `databus tail`.
// One object a line (see docs/PROTOCOL.md):
//
//	{"scn":12,"source":"main.person","op":"update","key":{"id":1},"ts":"...","schemaVersion":1,"row":{...},"before":{...}}
//	{"scn":12,"schemaChange":{"id":1,"name":"main.person","version":2,"key":["id"],"avro":{...}}}
//	{"scn":12,"endOfWindow":true,"ts":"...","events":3,"txid":""}
//
// Rows and keys are objects keyed by column name in column order. Values:
// exact decimals as strings at the column's scale, dates as YYYY-MM-DD,
// times of day as hh:mm:ss.ffffff, timestamps as RFC 3339, non-finite floats
// as "NaN"/"Infinity"/"-Infinity", bytes as base64. An image whose schema
// version is unknown is rendered as rowAvro/beforeAvro (base64 Avro) with an
// "error" member, so that nothing is hidden.
package eventjson

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"math"
	"math/big"
	"reflect"
	"strconv"
	"sync"
	"time"

	"github.com/databus-go/databus/event"
	"github.com/databus-go/databus/schema"
)

// Lookup finds the schema version a data event was written with.
// *schema.Registry implements it; when a Lookup also has
// Latest(id) (*schema.Entry, bool), it is used to name the source of an
// event whose version is unknown.
type Lookup interface {
	Get(id uint32, version uint16) (*schema.Entry, bool)
}

// Append appends the JSON line (object and newline) of one frame to dst.
func Append(dst []byte, e *event.Event, reg Lookup) []byte {
	dst = append(dst, `{"scn":`...)
	dst = strconv.AppendUint(dst, e.SCN, 10)
	switch e.Kind {
	case event.KindData:
		dst = appendData(dst, e, reg)
	case event.KindSchemaChange:
		dst = append(dst, `,"schemaChange":`...)
		dst = appendRawJSON(dst, e.Payload)
	case event.KindEndOfWindow:
		count, txid, _ := e.WindowInfo()
		dst = append(dst, `,"endOfWindow":true,"ts":"`...)
		dst = time.Unix(0, e.Timestamp).UTC().AppendFormat(dst, time.RFC3339Nano)
		dst = append(dst, `","events":`...)
		dst = strconv.AppendUint(dst, uint64(count), 10)
		dst = append(dst, `,"txid":`...)
		dst = appendJSONString(dst, txid)
	}
	return append(dst, "}\n"...)
}

// Entry is a Lookup of a single table version.
type Entry struct{ *schema.Entry }

// Get returns the entry when id and version are its own.
func (e Entry) Get(id uint32, version uint16) (*schema.Entry, bool) {
	return e.Entry, e.Entry != nil && e.ID == id && e.Version == version
}

// colPlan says how to render one column's decoded value as JSON.
type colPlan struct {
	name    string // column name: the JSON member name
	field   string // Avro field name: the key in the decoded map
	logical string // Avro logical type, if any
	scale   int    // decimal scale
}

// rowPlans caches a plan per registered table version; entries are
// immutable, so their plans are too.
var rowPlans sync.Map // *schema.Entry -> []colPlan

func planOf(e *schema.Entry) []colPlan {
	if p, ok := rowPlans.Load(e); ok {
		return p.([]colPlan)
	}
	p := make([]colPlan, len(e.Columns))
	for i, c := range e.Columns {
		p[i] = colPlan{name: c.Name, field: schema.FieldName(c.Name)}
		_, p[i].logical = schema.AvroType(c.Avro)
		if p[i].logical == "decimal" {
			var d struct {
				Scale int `json:"scale"`
			}
			_ = json.Unmarshal(c.Avro, &d)
			p[i].scale = d.Scale
		}
	}
	rowPlans.Store(e, p)
	return p
}

func appendData(dst []byte, e *event.Event, reg Lookup) []byte {
	entry, ok := reg.Get(e.Source, e.SchemaVersion)
	name := "#" + strconv.FormatUint(uint64(e.Source), 10)
	if ok {
		name = entry.Name
	} else if l, isReg := reg.(interface {
		Latest(uint32) (*schema.Entry, bool)
	}); isReg {
		if latest, ok := l.Latest(e.Source); ok {
			name = latest.Name
		}
	}
	dst = append(dst, `,"source":`...)
	dst = appendJSONString(dst, name)
	dst = append(dst, `,"op":"`...)
	dst = append(dst, e.Op.String()...)
	dst = append(dst, `","key":`...)
	dst = appendKeyJSON(dst, e.Key, entry)
	dst = append(dst, `,"ts":"`...)
	dst = time.Unix(0, e.Timestamp).UTC().AppendFormat(dst, time.RFC3339Nano)
	dst = append(dst, `","schemaVersion":`...)
	dst = strconv.AppendUint(dst, uint64(e.SchemaVersion), 10)
	var problem error
	if !ok {
		problem = fmt.Errorf("schema version %d of source %s is unknown to this relay", e.SchemaVersion, name)
	}
	image := func(member string, b []byte) {
		dst = append(dst, `,"`...)
		dst = append(dst, member...)
		if problem == nil {
			var row map[string]any
			if row, problem = entry.Codec.Decode(b); problem == nil {
				dst = append(dst, `":`...)
				dst = appendRowJSON(dst, row, planOf(entry))
				return
			}
		}
		// Undecodable: the raw Avro binary, so that nothing is hidden.
		dst = append(dst, `Avro":"`...)
		dst = base64.StdEncoding.AppendEncode(dst, b)
		dst = append(dst, '"')
	}
	if e.Op != event.OpDelete {
		image("row", e.Payload)
	}
	if e.HasBefore {
		image("before", e.Before)
	}
	if problem != nil {
		dst = append(dst, `,"error":`...)
		dst = appendJSONString(dst, problem.Error())
	}
	return dst
}

// appendKeyJSON renders a key as an object of key column name to value, or
// as an array when the schema is unknown or does not match.
func appendKeyJSON(dst, key []byte, e *schema.Entry) []byte {
	vals, err := event.DecodeKey(key)
	if err != nil {
		return appendJSONString(dst, base64.StdEncoding.EncodeToString(key))
	}
	if e == nil || len(e.Key) != len(vals) {
		return appendJSONValue(dst, vals, nil)
	}
	dst = append(dst, '{')
	for i, v := range vals {
		if i > 0 {
			dst = append(dst, ',')
		}
		dst = appendJSONString(dst, e.Key[i])
		dst = append(dst, ':')
		dst = appendJSONValue(dst, v, nil)
	}
	return append(dst, '}')
}

// appendRowJSON renders a decoded row in column order, keyed by column name.
func appendRowJSON(dst []byte, row map[string]any, plan []colPlan) []byte {
	dst = append(dst, '{')
	for i := range plan {
		if i > 0 {
			dst = append(dst, ',')
		}
		dst = appendJSONString(dst, plan[i].name)
		dst = append(dst, ':')
		dst = appendJSONValue(dst, row[plan[i].field], &plan[i])
	}
	return append(dst, '}')
}

func appendJSONValue(dst []byte, v any, c *colPlan) []byte {
	b, err := json.Marshal(jsonValue(v, c))
	if err != nil {
		return appendJSONString(dst, fmt.Sprint(v))
	}
	return append(dst, b...)
}

// jsonValue maps a decoded Avro value to what encoding/json renders as
// PROTOCOL.md says: exact decimals as strings, dates as YYYY-MM-DD, times of
// day as hh:mm:ss.ffffff, timestamps as RFC 3339, non-finite floats as
// strings, bytes (and fixed) as base64.
func jsonValue(v any, c *colPlan) any {
	switch x := v.(type) {
	case nil, string, bool, int, int32, int64, uint64, []byte:
		return x
	case float64:
		return finite(x)
	case float32:
		return finite(float64(x))
	case *big.Rat:
		if c != nil && c.logical == "decimal" {
			return x.FloatString(c.scale)
		}
		return ratString(x)
	case time.Time:
		if c != nil && c.logical == "date" {
			return x.UTC().Format(time.DateOnly)
		}
		return x.UTC().Format(time.RFC3339Nano)
	case time.Duration:
		return timeOfDay(x)
	case []any:
		out := make([]any, len(x))
		for i := range x {
			out[i] = jsonValue(x[i], nil)
		}
		return out
	case map[string]any:
		out := make(map[string]any, len(x))
		for k, e := range x {
			out[k] = jsonValue(e, nil)
		}
		return out
	}
	rv := reflect.ValueOf(v)
	if rv.Kind() == reflect.Array && rv.Type().Elem().Kind() == reflect.Uint8 {
		b := make([]byte, rv.Len())
		reflect.Copy(reflect.ValueOf(b), rv)
		return b
	}
	return v
}

func finite(f float64) any {
	switch {
	case math.IsNaN(f):
		return "NaN"
	case math.IsInf(f, 1):
		return "Infinity"
	case math.IsInf(f, -1):
		return "-Infinity"
	}
	return f
}

// ratString renders a rational exactly as a decimal when it has a finite
// decimal expansion, else as a/b.
func ratString(x *big.Rat) string {
	if x.IsInt() {
		return x.Num().String()
	}
	d := new(big.Int).Set(x.Denom())
	digits := 0
	for _, p := range []int64{2, 5} {
		bp, m := big.NewInt(p), new(big.Int)
		n := 0
		for {
			q, r := new(big.Int).QuoRem(d, bp, m)
			if r.Sign() != 0 {
				break
			}
			d, n = q, n+1
		}
		digits = max(digits, n)
	}
	if d.Cmp(big.NewInt(1)) != 0 {
		return x.RatString()
	}
	return x.FloatString(digits)
}

func timeOfDay(d time.Duration) string {
	neg := d < 0
	if neg {
		d = -d
	}
	h := d / time.Hour
	m := (d % time.Hour) / time.Minute
	s := (d % time.Minute) / time.Second
	us := (d % time.Second) / time.Microsecond
	out := fmt.Sprintf("%02d:%02d:%02d", h, m, s)
	if us != 0 {
		out += fmt.Sprintf(".%06d", us)
	}
	if neg {
		out = "-" + out
	}
	return out
}

func appendJSONString(dst []byte, s string) []byte {
	b, _ := json.Marshal(s)
	return append(dst, b...)
}

// appendRawJSON appends a JSON document compacted onto one line, or as a
// string when it is not valid JSON.
func appendRawJSON(dst, raw []byte) []byte {
	var buf bytes.Buffer
	if err := json.Compact(&buf, raw); err != nil {
		return appendJSONString(dst, string(raw))
	}
	return append(dst, buf.Bytes()...)
}
