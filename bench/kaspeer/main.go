// Command kaspeer is a minimal kas stand-in written in Go, for `bench/latency.py --kas go` only.
//
// It serves what one agent needs to connect (GetConfiguration, Register, Connect) and a TLS
// Kubernetes API proxy that hands each HTTP request to an idle reverse tunnel, as kas does. It has
// no authorization, routing, Redis or configuration: it exists to measure how much of the tunnel's
// added latency is the runtime's when the other side pays Go's gRPC and HTTP costs, as GitLab's kas
// does. The reference kas (package kas) stays the peer of every test and of the published figures.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
)

const (
	getConfigurationPath = "/gitlab.agent.agent_configuration.rpc.AgentConfiguration/GetConfiguration"
	registerPath         = "/gitlab.agent.agent_registrar.rpc.AgentRegistrar/Register"
	connectPath          = "/gitlab.agent.reverse_tunnel.rpc.ReverseTunnel/Connect"
	makeRequestPath      = "/gitlab.agent.kubernetes_api.rpc.KubernetesApi/MakeRequest"
	versionMetadataKey   = "gitlab-kas-version"
	serverVersion        = "gitlab-kas/v16.5.0/kaspeer"
	// chunkSize is the largest request body frame (PROTOCOL.md: 32 KiB chunks).
	chunkSize = 32 * 1024
	// idleTunnels bounds the parked Connect streams.
	idleTunnels = 1024
	// claimTimeout bounds the wait for an idle tunnel.
	claimTimeout = 5 * time.Second
)

// rawCodec passes gRPC messages through as bytes; wire.go encodes and decodes them.
type rawCodec struct{}

func (rawCodec) Marshal(v any) ([]byte, error) { return *(v.(*[]byte)), nil }
func (rawCodec) Unmarshal(data []byte, v any) error {
	*(v.(*[]byte)) = append([]byte(nil), data...)
	return nil
}
func (rawCodec) Name() string { return "proto" }

type peer struct {
	idle chan *tunnel
}

// tunnel is one parked Connect stream; its handler waits for an exchange or the stream's end.
type tunnel struct {
	exchanges chan *exchange
	gone      <-chan struct{}
}

// exchange is one proxied HTTP request, served by the Connect handler that claimed it.
type exchange struct {
	frames [][]byte
	writer http.ResponseWriter
	done   chan struct{}
}

func main() {
	agentAddr := flag.String("agent-listen", "127.0.0.1:0", "gRPC (h2c) address for agents")
	proxyAddr := flag.String("proxy-listen", "127.0.0.1:0", "HTTPS address of the Kubernetes API proxy")
	certFile := flag.String("cert", "", "proxy TLS certificate (PEM)")
	keyFile := flag.String("key", "", "proxy TLS key (PEM)")
	flag.Parse()
	if err := run(*agentAddr, *proxyAddr, *certFile, *keyFile); err != nil {
		log.Fatal(err)
	}
}

func run(agentAddr, proxyAddr, certFile, keyFile string) error {
	p := &peer{idle: make(chan *tunnel, idleTunnels)}
	agentListener, err := net.Listen("tcp", agentAddr)
	if err != nil {
		return err
	}
	proxyListener, err := net.Listen("tcp", proxyAddr)
	if err != nil {
		return err
	}
	grpcServer := grpc.NewServer(
		grpc.ForceServerCodec(rawCodec{}),
		grpc.UnknownServiceHandler(p.handle),
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{MinTime: 5 * time.Second, PermitWithoutStream: true}),
	)
	httpServer := &http.Server{Handler: http.HandlerFunc(p.proxy), ReadHeaderTimeout: 10 * time.Second}
	errs := make(chan error, 2)
	go func() { errs <- grpcServer.Serve(agentListener) }()
	go func() { errs <- httpServer.ServeTLS(proxyListener, certFile, keyFile) }()
	ready, _ := json.Marshal(map[string]string{
		"agent_url": "grpc://" + agentListener.Addr().String(),
		"proxy_url": "https://" + proxyListener.Addr().String(),
	})
	fmt.Println(string(ready))
	stop := make(chan os.Signal, 1)
	signal.Notify(stop, syscall.SIGTERM, syscall.SIGINT)
	select {
	case <-stop:
	case err := <-errs:
		return err
	}
	grpcServer.Stop()
	return httpServer.Close()
}

func (p *peer) handle(_ any, stream grpc.ServerStream) error {
	method, _ := grpc.MethodFromServerStream(stream)
	md, _ := metadata.FromIncomingContext(stream.Context())
	if auth := md.Get("authorization"); len(auth) != 1 || !strings.HasPrefix(auth[0], "Bearer ") {
		return status.Error(codes.Unauthenticated, "missing agent token")
	}
	switch method {
	case getConfigurationPath:
		return p.getConfiguration(stream)
	case registerPath:
		return p.register(stream)
	case connectPath:
		return p.connect(stream)
	}
	return status.Errorf(codes.Unimplemented, "unknown method %s", method)
}

func announceVersion(stream grpc.ServerStream) error {
	return stream.SendHeader(metadata.Pairs(versionMetadataKey, serverVersion))
}

// acceptRequest reads a unary-request call's one request and sends kas's version as response metadata.
func acceptRequest(stream grpc.ServerStream) error {
	var request []byte
	if err := stream.RecvMsg(&request); err != nil {
		return err
	}
	return announceVersion(stream)
}

// getConfiguration sends one empty configuration and keeps the stream open, as kas does between changes.
func (p *peer) getConfiguration(stream grpc.ServerStream) error {
	if err := acceptRequest(stream); err != nil {
		return err
	}
	response := appendMessage(nil, 1, nil) // configuration: {}
	response = appendString(response, 2, "kaspeer")
	if err := stream.SendMsg(&response); err != nil {
		return err
	}
	<-stream.Context().Done()
	return nil
}

func (p *peer) register(stream grpc.ServerStream) error {
	if err := acceptRequest(stream); err != nil {
		return err
	}
	empty := []byte{}
	return stream.SendMsg(&empty)
}

func (p *peer) connect(stream grpc.ServerStream) error {
	var first []byte
	if err := stream.RecvMsg(&first); err != nil {
		return err
	}
	if member, err := oneof(first); err != nil || member.num != connectRequestDescriptor {
		return status.Error(codes.InvalidArgument, "the first frame must be the descriptor")
	}
	t := &tunnel{exchanges: make(chan *exchange), gone: stream.Context().Done()}
	select {
	case p.idle <- t:
	default:
		return status.Error(codes.ResourceExhausted, "too many idle tunnels")
	}
	select {
	case ex := <-t.exchanges:
		defer close(ex.done)
		return ex.serve(stream)
	case <-t.gone:
		return nil
	}
}

// serve writes the request's frames, then relays the agent's answer to the HTTP client.
func (ex *exchange) serve(stream grpc.ServerStream) error {
	for _, frame := range ex.frames {
		if err := stream.SendMsg(&frame); err != nil {
			http.Error(ex.writer, "tunnel write failed", http.StatusBadGateway)
			return err
		}
	}
	answered := false
	for {
		var raw []byte
		err := stream.RecvMsg(&raw)
		if errors.Is(err, io.EOF) {
			if !answered {
				http.Error(ex.writer, "the agent ended the call without a response", http.StatusBadGateway)
			}
			return nil
		}
		if err != nil {
			return err
		}
		frame, err := oneof(raw)
		if err != nil {
			return status.Error(codes.InvalidArgument, err.Error())
		}
		switch frame.num {
		case connectRequestMessage:
			data, err := bytesField(frame.bytes, 1)
			if err != nil {
				return status.Error(codes.InvalidArgument, err.Error())
			}
			if answered, err = ex.relay(data, answered); err != nil {
				return status.Error(codes.InvalidArgument, err.Error())
			}
		case connectRequestError:
			if !answered {
				http.Error(ex.writer, "the agent answered with an error", http.StatusBadGateway)
				answered = true
			}
		}
	}
}

// relay writes one grpctool.HttpResponse message to the HTTP client.
func (ex *exchange) relay(message []byte, answered bool) (bool, error) {
	member, err := oneof(message)
	if err != nil {
		return answered, err
	}
	switch member.num {
	case httpHeader:
		code, header, err := responseHead(member.bytes)
		if err != nil {
			return answered, err
		}
		for key, values := range header {
			ex.writer.Header()[key] = values
		}
		ex.writer.WriteHeader(code)
		return true, nil
	case httpData:
		data, err := bytesField(member.bytes, 1)
		if err != nil {
			return answered, err
		}
		if _, err := ex.writer.Write(data); err != nil {
			return answered, err
		}
		ex.writer.(http.Flusher).Flush()
	}
	return answered, nil
}

// hopByHop are the request headers kas does not forward (RFC 9110 §7.6.1, plus kas's own credentials).
var hopByHop = map[string]bool{
	"Connection": true, "Keep-Alive": true, "Proxy-Connection": true, "Te": true, "Trailer": true,
	"Transfer-Encoding": true, "Upgrade": true, "Authorization": true, "Host": true,
}

func (p *peer) proxy(w http.ResponseWriter, r *http.Request) {
	if r.Header.Get("Authorization") == "" {
		http.Error(w, "missing credentials", http.StatusUnauthorized)
		return
	}
	body, err := io.ReadAll(io.LimitReader(r.Body, 64<<20))
	if err != nil {
		http.Error(w, "reading the request body failed", http.StatusBadRequest)
		return
	}
	header := map[string][]string{}
	for key, values := range r.Header {
		if !hopByHop[key] {
			header[key] = values
		}
	}
	header["Via"] = append(header["Via"], "gRPC/1.0 kaspeer")
	frames := [][]byte{
		requestInfoFrame(makeRequestPath, nil),
		messageFrame(httpRequestHeader(r.Method, r.URL.Path, header, r.URL.Query(), r.ContentLength)),
	}
	for len(body) > 0 {
		n := min(len(body), chunkSize)
		frames = append(frames, messageFrame(httpRequestData(body[:n])))
		body = body[n:]
	}
	frames = append(frames, messageFrame(httpRequestTrailer()), closeSendFrame())
	ex := &exchange{frames: frames, writer: w, done: make(chan struct{})}
	if !p.claim(r.Context(), ex) {
		http.Error(w, "no agent tunnel is available", http.StatusBadGateway)
		return
	}
	<-ex.done
}

// claim hands ex to an idle tunnel, skipping tunnels whose stream already ended.
func (p *peer) claim(ctx context.Context, ex *exchange) bool {
	ctx, cancel := context.WithTimeout(ctx, claimTimeout)
	defer cancel()
	for {
		select {
		case t := <-p.idle:
			select {
			case t.exchanges <- ex:
				return true
			case <-t.gone:
			}
		case <-ctx.Done():
			return false
		}
	}
}
