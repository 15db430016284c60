package postgres

import (
	"bytes"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"strconv"

	"github.com/jackc/pgx/v5/pgtype"

	"github.com/databus-go/databus/event"
	"github.com/databus-go/databus/schema"
)

// kind is how a column's text value (pgoutput's text format) becomes Avro.
// Every kind but kArray is a scalar; an array has a scalar element kind.
type kind uint8

const (
	kString      kind = iota + 1 // the server's text, as is
	kUUID                        // text, Avro string with logicalType uuid
	kInt                         // smallint, integer: Avro int
	kLong                        // bigint, oid: Avro long
	kFloat                       // real: Avro float
	kDouble                      // double precision: Avro double
	kBool                        // boolean
	kBytes                       // bytea (hex text): Avro bytes
	kDate                        // date: Avro int date
	kTime                        // time: Avro long time-micros
	kTimestamp                   // timestamp: Avro long local-timestamp-micros
	kTimestamptz                 // timestamptz: Avro long timestamp-micros
)

// colType is a column's decoding: a scalar kind, or an array of one.
type colType struct {
	kind  kind
	array bool
}

// avroScalar is the Avro type JSON of each scalar kind.
var avroScalar = map[kind]string{
	kString:      `"string"`,
	kUUID:        `{"type":"string","logicalType":"uuid"}`,
	kInt:         `"int"`,
	kLong:        `"long"`,
	kFloat:       `"float"`,
	kDouble:      `"double"`,
	kBool:        `"boolean"`,
	kBytes:       `"bytes"`,
	kDate:        `{"type":"int","logicalType":"date"}`,
	kTime:        `{"type":"long","logicalType":"time-micros"}`,
	kTimestamp:   `{"type":"long","logicalType":"local-timestamp-micros"}`,
	kTimestamptz: `{"type":"long","logicalType":"timestamp-micros"}`,
}

// avroType is the column's Avro type without the column's own nullability:
// arrays have nullable elements.
func (t colType) avroType() json.RawMessage {
	if t.array {
		return json.RawMessage(`{"type":"array","items":["null",` + avroScalar[t.kind] + `]}`)
	}
	return json.RawMessage(avroScalar[t.kind])
}

// typeByAvro inverts avroType: a stored schema version says by its Avro
// types alone how to decode the column, so a known definition needs no
// catalog lookup.
var typeByAvro = func() map[string]colType {
	m := map[string]colType{}
	for k := range avroScalar {
		for _, a := range []bool{false, true} {
			t := colType{kind: k, array: a}
			m[string(t.avroType())] = t
		}
	}
	return m
}()

// rowEncoding returns how the rows of schema version t are encoded: per
// column before UnchangedColumn, its decoding and Avro field name, and the
// key columns' indexes in key order. The capture (for each relation
// message) and ReadChunk (for each seed chunk) both derive it from the
// version alone, here, so that they encode a row alike.
func rowEncoding(t schema.Table) (types []colType, fields []string, key []int, err error) {
	n := len(t.Columns) - 1
	if n < 0 || t.Columns[n].Name != UnchangedColumn {
		return nil, nil, nil, fmt.Errorf("%s version %d does not end with column %s: it is not a schema of this adapter", t.Name, t.Version, UnchangedColumn)
	}
	types = make([]colType, n)
	fields = make([]string, n)
	for i, c := range t.Columns[:n] {
		ct, ok := typeByAvro[string(c.Avro)]
		if !ok {
			// A version that went through indented JSON (a bootstrap
			// store) has the same types, spelled with spaces.
			var b bytes.Buffer
			if json.Compact(&b, c.Avro) == nil {
				ct, ok = typeByAvro[b.String()]
			}
		}
		if !ok {
			return nil, nil, nil, fmt.Errorf("%s: column %s has Avro type %s, which the adapter does not decode", t.Name, c.Name, c.Avro)
		}
		types[i], fields[i] = ct, schema.FieldName(c.Name)
	}
	for _, k := range t.Key {
		i := t.Column(k)
		if i < 0 || i >= n {
			return nil, nil, nil, fmt.Errorf("%s version %d: key column %q is not a column", t.Name, t.Version, k)
		}
		key = append(key, i)
	}
	return types, fields, key, nil
}

// scalarOIDs maps the built-in scalar types to their kind. Types not listed
// (and not arrays, enums or domains; see catalog.typeOf) are kString.
var scalarOIDs = map[uint32]kind{
	pgtype.Int2OID:        kInt,
	pgtype.Int4OID:        kInt,
	pgtype.Int8OID:        kLong,
	pgtype.OIDOID:         kLong,
	pgtype.XIDOID:         kLong,
	pgtype.CIDOID:         kLong,
	pgtype.Float4OID:      kFloat,
	pgtype.Float8OID:      kDouble,
	pgtype.BoolOID:        kBool,
	pgtype.ByteaOID:       kBytes,
	pgtype.DateOID:        kDate,
	pgtype.TimeOID:        kTime,
	pgtype.TimestampOID:   kTimestamp,
	pgtype.TimestamptzOID: kTimestamptz,
	pgtype.UUIDOID:        kUUID,
	pgtype.NumericOID:     kString,
	pgtype.TextOID:        kString,
	pgtype.VarcharOID:     kString,
	pgtype.BPCharOID:      kString,
	pgtype.NameOID:        kString,
	pgtype.JSONOID:        kString,
	pgtype.JSONBOID:       kString,
	pgtype.IntervalOID:    kString,
	pgtype.TimetzOID:      kString,
	pgtype.InetOID:        kString,
	pgtype.CIDROID:        kString,
	pgtype.MacaddrOID:     kString,
}

// arrayOIDs maps the built-in array types whose elements the adapter decodes
// to their element type.
var arrayOIDs = map[uint32]uint32{
	pgtype.Int2ArrayOID:        pgtype.Int2OID,
	pgtype.Int4ArrayOID:        pgtype.Int4OID,
	pgtype.Int8ArrayOID:        pgtype.Int8OID,
	pgtype.OIDArrayOID:         pgtype.OIDOID,
	pgtype.Float4ArrayOID:      pgtype.Float4OID,
	pgtype.Float8ArrayOID:      pgtype.Float8OID,
	pgtype.BoolArrayOID:        pgtype.BoolOID,
	pgtype.ByteaArrayOID:       pgtype.ByteaOID,
	pgtype.DateArrayOID:        pgtype.DateOID,
	pgtype.TimeArrayOID:        pgtype.TimeOID,
	pgtype.TimestampArrayOID:   pgtype.TimestampOID,
	pgtype.TimestamptzArrayOID: pgtype.TimestamptzOID,
	pgtype.UUIDArrayOID:        pgtype.UUIDOID,
	pgtype.NumericArrayOID:     pgtype.NumericOID,
	pgtype.TextArrayOID:        pgtype.TextOID,
	pgtype.VarcharArrayOID:     pgtype.VarcharOID,
	pgtype.BPCharArrayOID:      pgtype.BPCharOID,
	pgtype.NameArrayOID:        pgtype.NameOID,
	pgtype.JSONArrayOID:        pgtype.JSONOID,
	pgtype.JSONBArrayOID:       pgtype.JSONBOID,
	pgtype.IntervalArrayOID:    pgtype.IntervalOID,
	pgtype.TimetzArrayOID:      pgtype.TimetzOID,
	pgtype.InetArrayOID:        pgtype.InetOID,
	pgtype.CIDRArrayOID:        pgtype.CIDROID,
	pgtype.MacaddrArrayOID:     pgtype.MacaddrOID,
}

// builtinType returns the decoding of a built-in type, or ok=false for a
// type the catalog must describe (user-defined types: enums, domains,
// arrays of them) or that is decoded as text.
func builtinType(oid uint32) (colType, bool) {
	if k, ok := scalarOIDs[oid]; ok {
		return colType{kind: k}, true
	}
	if e, ok := arrayOIDs[oid]; ok {
		return colType{kind: scalarOIDs[e], array: true}, true
	}
	return colType{}, false
}

// ---- Avro binary ----

// Union branch indexes of a nullable value, as Avro longs.
const (
	unionNull  = 0x00 // branch 0: null
	unionValue = 0x02 // branch 1: the value
)

// errValue is wrapped by the errors of text values the adapter cannot
// convert; the caller adds the table and column.
var errValue = errors.New("bad value")

func badText(k kind, s []byte) error {
	q := string(s)
	if len(q) > 64 {
		q = q[:64] + "..."
	}
	return fmt.Errorf("%w %q for %s", errValue, q, kindName(k))
}

func kindName(k kind) string {
	return map[kind]string{kString: "text", kUUID: "uuid", kInt: "integer", kLong: "bigint", kFloat: "real",
		kDouble: "double precision", kBool: "boolean", kBytes: "bytea", kDate: "date", kTime: "time",
		kTimestamp: "timestamp", kTimestamptz: "timestamptz"}[k]
}

// appendValue appends the Avro encoding (without union branch) of the text
// value s of column type t.
func appendValue(dst []byte, t colType, s []byte) ([]byte, error) {
	if !t.array {
		return appendScalar(dst, t.kind, s)
	}
	return appendArray(dst, t.kind, s)
}

func appendScalar(dst []byte, k kind, s []byte) ([]byte, error) {
	switch k {
	case kString, kUUID:
		return schema.AppendBytes(dst, s), nil
	case kInt, kLong:
		n, ok := parseInt(s)
		if !ok || (k == kInt && (n < math.MinInt32 || n > math.MaxInt32)) {
			return nil, badText(k, s)
		}
		return schema.AppendLong(dst, n), nil
	case kFloat:
		f, err := strconv.ParseFloat(string(s), 32)
		if err != nil {
			return nil, badText(k, s)
		}
		return binary.LittleEndian.AppendUint32(dst, math.Float32bits(float32(f))), nil
	case kDouble:
		f, err := strconv.ParseFloat(string(s), 64)
		if err != nil {
			return nil, badText(k, s)
		}
		return binary.LittleEndian.AppendUint64(dst, math.Float64bits(f)), nil
	case kBool:
		switch string(s) {
		case "t", "true":
			return append(dst, 1), nil
		case "f", "false":
			return append(dst, 0), nil
		}
		return nil, badText(k, s)
	case kBytes:
		b, ok := decodeBytea(s)
		if !ok {
			return nil, badText(k, s)
		}
		return schema.AppendBytes(dst, b), nil
	case kDate:
		d, ok := parseDate(s)
		if !ok {
			return nil, badText(k, s)
		}
		return schema.AppendLong(dst, d), nil
	case kTime:
		us, ok := parseTime(s)
		if !ok {
			return nil, badText(k, s)
		}
		return schema.AppendLong(dst, us), nil
	case kTimestamp, kTimestamptz:
		us, ok := parseTimestamp(s, k == kTimestamptz)
		if !ok {
			return nil, badText(k, s)
		}
		return schema.AppendLong(dst, us), nil
	}
	return nil, fmt.Errorf("%w: kind %d", errValue, k)
}

// appendArray appends an Avro array of nullable elements parsed from the
// array's text form. Multi-dimensional arrays are flattened in row-major
// order.
func appendArray(dst []byte, k kind, s []byte) ([]byte, error) {
	var err error
	n := 0
	start := len(dst)
	// The element count is only known after parsing: reserve the longest
	// count prefix and move the items back when it was shorter.
	dst = append(dst, make([]byte, binary.MaxVarintLen64)...)
	body := len(dst)
	perr := parseArray(s, func(elem []byte, null bool) error {
		n++
		if null {
			dst = append(dst, unionNull)
			return nil
		}
		dst = append(dst, unionValue)
		dst, err = appendScalar(dst, k, elem)
		return err
	})
	if perr != nil {
		if errors.Is(perr, errValue) {
			return nil, perr
		}
		return nil, badText(k, s)
	}
	if n == 0 {
		return append(dst[:start], 0), nil
	}
	pre := schema.AppendLong(nil, int64(n))
	moved := copy(dst[start+len(pre):], dst[body:])
	copy(dst[start:], pre)
	dst = dst[:start+len(pre)+moved]
	return append(dst, 0), nil
}

// appendKey appends the key component of the text value s (nil for NULL).
func appendKey(dst []byte, t colType, s []byte, null bool) ([]byte, error) {
	if null {
		return event.AppendKeyNull(dst), nil
	}
	switch {
	case t.array:
		return event.AppendKeyString(dst, string(s)), nil
	case t.kind == kInt || t.kind == kLong:
		n, ok := parseInt(s)
		if !ok {
			return nil, badText(t.kind, s)
		}
		return event.AppendKeyInt(dst, n), nil
	case t.kind == kBytes:
		b, ok := decodeBytea(s)
		if !ok {
			return nil, badText(t.kind, s)
		}
		return event.AppendKeyBytes(dst, b), nil
	}
	return event.AppendKeyString(dst, string(s)), nil
}

func parseInt(s []byte) (int64, bool) {
	if len(s) == 0 || len(s) > 20 {
		return 0, false
	}
	neg := s[0] == '-'
	i := 0
	if neg {
		i = 1
		if len(s) == 1 {
			return 0, false
		}
	}
	var u uint64
	for ; i < len(s); i++ {
		c := s[i]
		if c < '0' || c > '9' {
			return 0, false
		}
		if u > (math.MaxUint64-9)/10 {
			return 0, false
		}
		u = u*10 + uint64(c-'0')
	}
	if neg {
		if u > 1<<63 {
			return 0, false
		}
		return int64(-u), true
	}
	if u > math.MaxInt64 {
		return 0, false
	}
	return int64(u), true
}

// decodeBytea decodes bytea's hex text form, \x0a0b (the adapter sets
// bytea_output=hex on its replication connection).
func decodeBytea(s []byte) ([]byte, bool) {
	if len(s) < 2 || s[0] != '\\' || s[1] != 'x' || len(s)%2 != 0 {
		return nil, false
	}
	b := make([]byte, (len(s)-2)/2)
	if _, err := hex.Decode(b, s[2:]); err != nil {
		return nil, false
	}
	return b, true
}

// ---- temporal text (DateStyle ISO, TimeZone UTC) ----

// Sentinels for the infinite dates and timestamps.
const (
	dateInfinity         = math.MaxInt32
	dateNegInfinity      = math.MinInt32
	timestampInfinity    = math.MaxInt64
	timestampNegInfinity = math.MinInt64
)

func digits(s []byte, i *int, min, max int) (int64, bool) {
	start := *i
	var n int64
	for *i < len(s) && s[*i] >= '0' && s[*i] <= '9' && *i-start < max {
		n = n*10 + int64(s[*i]-'0')
		*i++
	}
	return n, *i-start >= min
}

func lit(s []byte, i *int, c byte) bool {
	if *i < len(s) && s[*i] == c {
		*i++
		return true
	}
	return false
}

// daysFromCivil is the number of days from 1970-01-01 to y-m-d in the
// proleptic Gregorian calendar (y astronomical: 1 BC is 0).
func daysFromCivil(y, m, d int64) int64 {
	if m <= 2 {
		y--
	}
	era := y / 400
	if y < 0 && y%400 != 0 {
		era--
	}
	yoe := y - era*400
	mp := (m + 9) % 12
	doy := (153*mp+2)/5 + d - 1
	doe := yoe*365 + yoe/4 - yoe/100 + doy
	return era*146097 + doe - 719468
}

// hasBC reports whether s ends with " BC" and returns s without it.
func hasBC(s []byte) ([]byte, bool) {
	if n := len(s); n > 3 && string(s[n-3:]) == " BC" {
		return s[:n-3], true
	}
	return s, false
}

// parseYMD reads YYYY-MM-DD (4 or more year digits) at s[*i:].
func parseYMD(s []byte, i *int, bc bool) (int64, bool) {
	y, ok1 := digits(s, i, 4, 7)
	ok2 := lit(s, i, '-')
	m, ok3 := digits(s, i, 2, 2)
	ok4 := lit(s, i, '-')
	d, ok5 := digits(s, i, 2, 2)
	if !(ok1 && ok2 && ok3 && ok4 && ok5) || m < 1 || m > 12 || d < 1 || d > 31 {
		return 0, false
	}
	if bc {
		y = 1 - y
	}
	return daysFromCivil(y, m, d), true
}

// parseDate reads a date into days since 1970-01-01; infinity and
// -infinity become dateInfinity and dateNegInfinity.
func parseDate(s []byte) (int64, bool) {
	switch string(s) {
	case "infinity":
		return dateInfinity, true
	case "-infinity":
		return dateNegInfinity, true
	}
	s, bc := hasBC(s)
	i := 0
	d, ok := parseYMD(s, &i, bc)
	return d, ok && i == len(s)
}

// parseClock reads HH:MM:SS[.ffffff] at s[*i:] into microseconds.
func parseClock(s []byte, i *int) (int64, bool) {
	h, ok1 := digits(s, i, 2, 2)
	ok2 := lit(s, i, ':')
	m, ok3 := digits(s, i, 2, 2)
	ok4 := lit(s, i, ':')
	sec, ok5 := digits(s, i, 2, 2)
	if !(ok1 && ok2 && ok3 && ok4 && ok5) || h > 24 || m > 59 || sec > 60 {
		return 0, false
	}
	us := ((h*60+m)*60 + sec) * 1_000_000
	if lit(s, i, '.') {
		start := *i
		f, ok := digits(s, i, 1, 6)
		if !ok {
			return 0, false
		}
		for d := *i - start; d < 6; d++ {
			f *= 10
		}
		us += f
	}
	return us, true
}

// parseTime reads a time of day into microseconds since midnight (24:00:00
// is 86400000000).
func parseTime(s []byte) (int64, bool) {
	i := 0
	us, ok := parseClock(s, &i)
	return us, ok && i == len(s)
}

// parseTimestamp reads a timestamp (with a UTC offset when tz) into
// microseconds since 1970-01-01 00:00:00 (UTC for tz). infinity and
// -infinity become the int64 extremes; the few finite values beyond the
// int64 range (after 294247-01-10) saturate to them as well.
func parseTimestamp(s []byte, tz bool) (int64, bool) {
	switch string(s) {
	case "infinity":
		return timestampInfinity, true
	case "-infinity":
		return timestampNegInfinity, true
	}
	s, bc := hasBC(s)
	i := 0
	days, ok := parseYMD(s, &i, bc)
	if !ok || !lit(s, &i, ' ') {
		return 0, false
	}
	us, ok := parseClock(s, &i)
	if !ok {
		return 0, false
	}
	var off int64 // seconds east of UTC
	if tz {
		var sign int64 = 1
		switch {
		case lit(s, &i, '+'):
		case lit(s, &i, '-'):
			sign = -1
		default:
			return 0, false
		}
		h, ok := digits(s, &i, 2, 2)
		if !ok {
			return 0, false
		}
		off = h * 3600
		if lit(s, &i, ':') {
			m, ok := digits(s, &i, 2, 2)
			if !ok {
				return 0, false
			}
			off += m * 60
			if lit(s, &i, ':') {
				sec, ok := digits(s, &i, 2, 2)
				if !ok {
					return 0, false
				}
				off += sec
			}
		}
		off *= sign
	}
	if i != len(s) {
		return 0, false
	}
	// days*86400e6 overflows int64 only beyond year 294247.
	const maxDays = math.MaxInt64 / 86_400_000_000
	if days > maxDays {
		return timestampInfinity, true
	}
	if days < -maxDays {
		return timestampNegInfinity, true
	}
	base := days * 86_400_000_000
	rest := us - off*1_000_000
	if rest > 0 && base > math.MaxInt64-rest {
		return timestampInfinity, true
	}
	return base + rest, true
}

// lsnString formats an LSN as PostgreSQL does: 16/B374D848.
func lsnString(lsn uint64) string {
	return fmt.Sprintf("%X/%X", uint32(lsn>>32), uint32(lsn))
}
