package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	otelprom "go.opentelemetry.io/otel/exporters/prometheus"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
)

// metricsAddrUsage is the help of --metrics-addr.
const metricsAddrUsage = "serve Prometheus /metrics, /healthz and /readyz over HTTP on this address, like 127.0.0.1:9464 " +
	"(port 0: any free port, logged at info as \"metrics listening\"; default: off). The endpoint has no authentication: " +
	"a non-loopback address shows stream and shard names and health to that network"

// promMeterProvider returns an OpenTelemetry SDK meter provider whose
// metrics are gathered by a private Prometheus registry (never the global
// one), in Prometheus' naming: dots become underscores, and counters get
// _total and unit suffixes.
func promMeterProvider() (*sdkmetric.MeterProvider, *prometheus.Registry, error) {
	reg := prometheus.NewRegistry()
	exp, err := otelprom.New(otelprom.WithRegisterer(reg))
	if err != nil {
		return nil, nil, fmt.Errorf("prometheus exporter: %w", err)
	}
	return sdkmetric.NewMeterProvider(sdkmetric.WithReader(exp)), reg, nil
}

// opsServer serves /metrics, /healthz and /readyz for --metrics-addr.
//
//   - /metrics: the registry, in the Prometheus text format.
//   - /healthz: 200 "ok" while the process runs.
//   - /readyz: 200 "ok" when the readiness function (set with setReady)
//     reports no reason; else 503 with one line per reason.
type opsServer struct {
	srv   *http.Server
	addr  net.Addr
	ready atomic.Pointer[func() []string]
	done  chan struct{} // closed when Serve returned
}

// Timeouts of the ops server: its answers are small and local, so a slow
// client is cut off rather than holding a connection.
const (
	opsReadHeaderTimeout = 5 * time.Second
	opsWriteTimeout      = 30 * time.Second
	opsIdleTimeout       = 60 * time.Second
	opsShutdownTimeout   = 2 * time.Second
)

// startOps listens on addr and serves reg until shutdown. It logs the
// address it listens on at INFO ("metrics listening", addr=...), and a WARN
// when that address is not a loopback one.
func startOps(addr string, reg prometheus.Gatherer, log *slog.Logger) (*opsServer, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("--metrics-addr: %w", err)
	}
	errLog := slog.NewLogLogger(log.Handler(), slog.LevelWarn)
	o := &opsServer{addr: ln.Addr(), done: make(chan struct{})}
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{ErrorLog: errLog}))
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		fmt.Fprintln(w, "ok")
	})
	mux.HandleFunc("GET /readyz", o.serveReady)
	o.srv = &http.Server{
		Handler:           mux,
		ReadHeaderTimeout: opsReadHeaderTimeout,
		WriteTimeout:      opsWriteTimeout,
		IdleTimeout:       opsIdleTimeout,
		ErrorLog:          errLog,
	}
	go func() {
		defer close(o.done)
		if err := o.srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Error("metrics endpoint stopped", "err", err)
		}
	}()
	log.Info("metrics listening", "addr", o.addr.String())
	if !isLoopback(ln.Addr()) {
		log.Warn("the metrics endpoint listens beyond loopback, with no authentication: "+
			"whoever reaches it sees stream and shard names and health", "addr", o.addr.String())
	}
	return o, nil
}

func isLoopback(a net.Addr) bool {
	ta, ok := a.(*net.TCPAddr)
	return ok && ta.IP.IsLoopback()
}

// setReady sets the function /readyz asks: it returns the reasons the
// process is not ready, none when it is. Until it is set, /readyz answers
// that the process is starting.
func (o *opsServer) setReady(reasons func() []string) { o.ready.Store(&reasons) }

func (o *opsServer) serveReady(w http.ResponseWriter, _ *http.Request) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	reasons := []string{"starting"}
	if f := o.ready.Load(); f != nil {
		reasons = (*f)()
	}
	if len(reasons) == 0 {
		fmt.Fprintln(w, "ok")
		return
	}
	w.WriteHeader(http.StatusServiceUnavailable)
	for _, r := range reasons {
		fmt.Fprintln(w, strings.ReplaceAll(r, "\n", " "))
	}
}

// shutdown stops the server: it lets requests in progress finish for at
// most opsShutdownTimeout, then closes their connections. It is idempotent.
func (o *opsServer) shutdown(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), opsShutdownTimeout)
	defer cancel()
	err := o.srv.Shutdown(ctx)
	if err != nil {
		err = errors.Join(err, o.srv.Close())
	}
	<-o.done
	if err != nil {
		return fmt.Errorf("stop the metrics endpoint: %w", err)
	}
	return nil
}
