package schema

import "encoding/binary"

// The Avro binary primitives source adapters write rows with directly, on
// their hot path, instead of building a map for Codec.Encode. A row so
// written must decode with the table's Codec (adapters test that).

// AppendLong appends an Avro int or long: zig-zag, then a varint.
func AppendLong(dst []byte, v int64) []byte {
	return binary.AppendUvarint(dst, uint64(v<<1)^uint64(v>>63))
}

// AppendBytes appends an Avro bytes or string value: its length as a long,
// then the bytes.
func AppendBytes[T string | []byte](dst []byte, b T) []byte {
	return append(AppendLong(dst, int64(len(b))), b...)
}
