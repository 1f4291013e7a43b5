package main

// Protobuf encoding of the few agentk ⇄ kas messages the peer exchanges, by field number
// (PROTOCOL.md; the project's .proto files under agent_proto/ carry the same numbers).

import (
	"errors"
	"fmt"
	"net/http"

	"google.golang.org/protobuf/encoding/protowire"
)

// reverse_tunnel.rpc.ConnectResponse oneof msg.
const (
	connectResponseRequestInfo = 1
	connectResponseMessage     = 2
	connectResponseCloseSend   = 3
)

// reverse_tunnel.rpc.ConnectRequest oneof msg.
const (
	connectRequestDescriptor = 1
	connectRequestHeader     = 2
	connectRequestMessage    = 3
	connectRequestTrailer    = 4
	connectRequestError      = 5
)

// grpctool.HttpRequest / grpctool.HttpResponse oneof message.
const (
	httpHeader  = 1
	httpData    = 2
	httpTrailer = 3
)

func appendMessage(b []byte, num protowire.Number, msg []byte) []byte {
	b = protowire.AppendTag(b, num, protowire.BytesType)
	return protowire.AppendBytes(b, msg)
}

func appendString(b []byte, num protowire.Number, s string) []byte {
	b = protowire.AppendTag(b, num, protowire.BytesType)
	return protowire.AppendString(b, s)
}

// appendValuesMap encodes map<string, prototool.Values> (entry: key = 1, value = 2; Values.value = 1).
func appendValuesMap(b []byte, num protowire.Number, m map[string][]string) []byte {
	for key, values := range m {
		var vals []byte
		for _, v := range values {
			vals = appendString(vals, 1, v)
		}
		var entry []byte
		entry = appendString(entry, 1, key)
		entry = appendMessage(entry, 2, vals)
		b = appendMessage(b, num, entry)
	}
	return b
}

// requestInfoFrame is ConnectResponse{request_info: {method_name, meta}}.
func requestInfoFrame(method string, meta map[string][]string) []byte {
	var info []byte
	info = appendString(info, 1, method)
	info = appendValuesMap(info, 2, meta)
	return appendMessage(nil, connectResponseRequestInfo, info)
}

// messageFrame is ConnectResponse{message: {data}}.
func messageFrame(data []byte) []byte {
	return appendMessage(nil, connectResponseMessage, appendMessage(nil, 1, data))
}

// closeSendFrame is ConnectResponse{close_send: {}}.
func closeSendFrame() []byte {
	return appendMessage(nil, connectResponseCloseSend, nil)
}

// httpRequestHeader is grpctool.HttpRequest{header: {request: {method, header, url_path, query}, content_length}}.
func httpRequestHeader(method, path string, header, query map[string][]string, contentLength int64) []byte {
	var req []byte
	req = appendString(req, 1, method)
	req = appendValuesMap(req, 2, header)
	req = appendString(req, 3, path)
	req = appendValuesMap(req, 4, query)
	var head []byte
	head = appendMessage(head, 1, req)
	head = protowire.AppendTag(head, 3, protowire.VarintType)
	head = protowire.AppendVarint(head, uint64(contentLength))
	return appendMessage(nil, httpHeader, head)
}

func httpRequestData(chunk []byte) []byte {
	return appendMessage(nil, httpData, appendMessage(nil, 1, chunk))
}

func httpRequestTrailer() []byte {
	return appendMessage(nil, httpTrailer, nil)
}

// field is one decoded length-delimited or varint field.
type field struct {
	num   protowire.Number
	bytes []byte
	value uint64
}

func fields(b []byte) ([]field, error) {
	var out []field
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			return nil, protowire.ParseError(n)
		}
		b = b[n:]
		f := field{num: num}
		switch typ {
		case protowire.BytesType:
			f.bytes, n = protowire.ConsumeBytes(b)
		case protowire.VarintType:
			f.value, n = protowire.ConsumeVarint(b)
		default:
			n = protowire.ConsumeFieldValue(num, typ, b)
		}
		if n < 0 {
			return nil, protowire.ParseError(n)
		}
		b = b[n:]
		out = append(out, f)
	}
	return out, nil
}

// oneof returns the single set member of a message whose fields form one oneof.
func oneof(b []byte) (field, error) {
	fs, err := fields(b)
	if err != nil {
		return field{}, err
	}
	if len(fs) != 1 {
		return field{}, fmt.Errorf("expected one oneof member, got %d fields", len(fs))
	}
	return fs[0], nil
}

// bytesField returns field `num` of message b (empty if absent).
func bytesField(b []byte, num protowire.Number) ([]byte, error) {
	fs, err := fields(b)
	if err != nil {
		return nil, err
	}
	for _, f := range fs {
		if f.num == num {
			return f.bytes, nil
		}
	}
	return nil, nil
}

// responseHead decodes grpctool.HttpResponse.Header{response: {status_code, status, header}}.
func responseHead(b []byte) (int, http.Header, error) {
	resp, err := bytesField(b, 1)
	if err != nil {
		return 0, nil, err
	}
	fs, err := fields(resp)
	if err != nil {
		return 0, nil, err
	}
	status, header := 0, http.Header{}
	for _, f := range fs {
		switch f.num {
		case 1:
			status = int(int32(f.value))
		case 3:
			if err := addEntry(header, f.bytes); err != nil {
				return 0, nil, err
			}
		}
	}
	if status == 0 {
		return 0, nil, errors.New("response header without status code")
	}
	return status, header, nil
}

func addEntry(header http.Header, entry []byte) error {
	fs, err := fields(entry)
	if err != nil {
		return err
	}
	var key string
	var values []byte
	for _, f := range fs {
		switch f.num {
		case 1:
			key = string(f.bytes)
		case 2:
			values = f.bytes
		}
	}
	vs, err := fields(values)
	if err != nil {
		return err
	}
	for _, v := range vs {
		header.Add(key, string(v.bytes))
	}
	return nil
}
