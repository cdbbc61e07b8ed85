package main

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"os/exec"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/kinesis"
	"github.com/aws/aws-sdk-go-v2/service/kinesis/types"
	"github.com/shardflow/shardflow/internal/awstest"
)

// childEnv makes the test binary run the CLI's main instead of the tests:
// signal handling is tested on a real process.
const childEnv = "SHARDFLOW_CLI_TEST_CHILD"

func TestMain(m *testing.M) {
	if os.Getenv(childEnv) == "1" {
		main()
		return
	}
	os.Exit(m.Run())
}

// hangBound bounds how long a test waits for a child to do something. It
// is a bound on a hang, far above what a loaded machine needs.
const hangBound = 60 * time.Second

// lineLog collects the lines a child writes to one of its outputs.
type lineLog struct {
	mu     sync.Mutex
	lines  []string
	change chan struct{}
	eof    chan struct{} // closed once the output is read to its end
}

func newLineLog(r io.Reader) *lineLog {
	l := &lineLog{change: make(chan struct{}), eof: make(chan struct{})}
	go func() {
		defer close(l.eof)
		br := bufio.NewReader(r) // no line length limit, unlike a Scanner
		for {
			line, err := br.ReadString('\n')
			if line = strings.TrimSuffix(line, "\n"); line != "" || err == nil {
				l.mu.Lock()
				l.lines = append(l.lines, line)
				close(l.change)
				l.change = make(chan struct{})
				l.mu.Unlock()
			}
			if err != nil {
				return
			}
		}
	}()
	return l
}

func (l *lineLog) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return strings.Join(l.lines, "\n")
}

// waitFor returns the first line that contains every one of parts, waiting
// for it at most hangBound.
func (l *lineLog) waitFor(t *testing.T, parts ...string) string {
	t.Helper()
	deadline := time.After(hangBound)
	for {
		l.mu.Lock()
		change := l.change
		for _, line := range l.lines {
			if containsAll(line, parts) {
				l.mu.Unlock()
				return line
			}
		}
		l.mu.Unlock()
		select {
		case <-change:
		case <-deadline:
			t.Fatalf("no line with %q in %v; got:\n%s", parts, hangBound, l)
		}
	}
}

func containsAll(s string, parts []string) bool {
	for _, p := range parts {
		if !strings.Contains(s, p) {
			return false
		}
	}
	return true
}

// child is the CLI running in a process of its own.
type child struct {
	cmd            *exec.Cmd
	stdin          io.WriteCloser
	stdout, stderr *lineLog
	exited         chan struct{}
}

func startChild(t *testing.T, args ...string) *child {
	t.Helper()
	cmd := exec.Command(os.Args[0], args...)
	cmd.Env = childEnviron()
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	c := &child{cmd: cmd, stdin: stdin, stdout: newLineLog(stdout), stderr: newLineLog(stderr), exited: make(chan struct{})}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		// Wait closes the pipes once the child exits: read them to their
		// end first, or a loaded machine loses the child's last lines.
		<-c.stdout.eof
		<-c.stderr.eof
		_ = cmd.Wait()
		close(c.exited)
	}()
	t.Cleanup(func() {
		select {
		case <-c.exited:
		default:
			_ = cmd.Process.Kill()
			<-c.exited
		}
	})
	return c
}

// childEnviron is this process's environment for the child, with fake
// credentials, no AWS configuration files and no proxy.
func childEnviron() []string {
	var env []string
	for _, kv := range os.Environ() {
		k, _, _ := strings.Cut(kv, "=")
		if strings.HasPrefix(k, "AWS_") || strings.HasSuffix(strings.ToUpper(k), "_PROXY") {
			continue
		}
		env = append(env, kv)
	}
	return append(env, childEnv+"=1", "AWS_ACCESS_KEY_ID=fake", "AWS_SECRET_ACCESS_KEY=fake", "AWS_REGION=us-east-1",
		"AWS_EC2_METADATA_DISABLED=true", "AWS_CONFIG_FILE=/dev/null", "AWS_SHARED_CREDENTIALS_FILE=/dev/null")
}

func (c *child) signal(t *testing.T, sig os.Signal) {
	t.Helper()
	if err := c.cmd.Process.Signal(sig); err != nil {
		t.Fatalf("signal %v: %v", sig, err)
	}
}

// exitCode waits (at most hangBound) for the child to exit.
func (c *child) exitCode(t *testing.T) int {
	t.Helper()
	select {
	case <-c.exited:
	case <-time.After(hangBound):
		t.Fatalf("still running %v after the signal; stderr:\n%s", hangBound, c.stderr)
	}
	return c.cmd.ProcessState.ExitCode()
}

// blackHole is a Kinesis endpoint that accepts connections, reads the
// requests and never answers. got is closed when a request arrived.
func blackHole(t *testing.T) (endpoint string, got <-chan struct{}) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	arrived := make(chan struct{})
	var once sync.Once
	var mu sync.Mutex
	var conns []net.Conn
	go func() {
		for {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, conn)
			mu.Unlock()
			go func() {
				buf := make([]byte, 4096)
				for {
					n, err := conn.Read(buf)
					if n > 0 {
						once.Do(func() { close(arrived) })
					}
					if err != nil {
						return
					}
				}
			}()
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		defer mu.Unlock()
		for _, c := range conns {
			c.Close()
		}
	})
	return "http://" + ln.Addr().String(), arrived
}

// refusedEndpoint is a loopback address where nothing listens.
func refusedEndpoint(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	return "http://" + addr
}

// hangingPuts is a proxy to the Kinesis emulator that forwards every call
// but PutRecords, which it holds unanswered: a relay then reads records it
// cannot write. got is closed when the first PutRecords arrived.
func hangingPuts(t *testing.T) (endpoint string, got <-chan struct{}) {
	t.Helper()
	target, err := url.Parse(awstest.KinesisEndpoint(t))
	if err != nil {
		t.Fatal(err)
	}
	proxy := httputil.NewSingleHostReverseProxy(target)
	proxy.Transport = &http.Transport{Proxy: nil}
	arrived, stop := make(chan struct{}), make(chan struct{})
	var once sync.Once
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if strings.HasSuffix(r.Header.Get("X-Amz-Target"), ".PutRecords") {
			_, _ = io.Copy(io.Discard, r.Body)
			once.Do(func() { close(arrived) })
			select {
			case <-r.Context().Done():
			case <-stop:
			}
			return
		}
		proxy.ServeHTTP(w, r)
	}))
	t.Cleanup(func() {
		close(stop)
		srv.Close()
	})
	return srv.URL, arrived
}

func waitFor(t *testing.T, ch <-chan struct{}, what string) {
	t.Helper()
	select {
	case <-ch:
	case <-time.After(hangBound):
		t.Fatalf("%s did not happen in %v", what, hangBound)
	}
}

func TestPutStopsWithinShutdownTimeoutWhenKinesisNeverAnswers(t *testing.T) {
	endpoint, got := blackHole(t)
	c := startChild(t, "put", "--stream", "s", "--endpoint-url", endpoint, "--shutdown-timeout", "2s")
	for i := range 10 {
		fmt.Fprintf(c.stdin, "line-%d\n", i)
	}
	// stdin stays open: put waits for more input when the signal comes.
	waitFor(t, got, "a PutRecords request")
	c.signal(t, syscall.SIGINT)
	if code := c.exitCode(t); code != 1 {
		t.Errorf("exit status %d; want 1; stderr:\n%s", code, c.stderr)
	}
	c.stderr.waitFor(t, "put 10 lines: 0 records written, 10 failed")
	c.stderr.waitFor(t, "shardflow put: 10 records not written")
}

func TestASecondSignalExitsAtOnce(t *testing.T) {
	for _, tc := range []struct {
		sig  syscall.Signal
		want int
	}{
		{syscall.SIGINT, 130},
		{syscall.SIGTERM, 143},
	} {
		t.Run(tc.sig.String(), func(t *testing.T) {
			endpoint, got := blackHole(t)
			// The graceful stop could take 10 minutes: only the second
			// signal ends the process within hangBound.
			c := startChild(t, "put", "--stream", "s", "--endpoint-url", endpoint, "--shutdown-timeout", "10m")
			fmt.Fprintln(c.stdin, "one line")
			waitFor(t, got, "a PutRecords request")
			c.signal(t, tc.sig)
			c.stderr.waitFor(t, "stopping gracefully")
			c.signal(t, tc.sig)
			if code := c.exitCode(t); code != tc.want {
				t.Errorf("exit status %d; want %d; stderr:\n%s", code, tc.want, c.stderr)
			}
			c.stderr.waitFor(t, "exiting at once")
		})
	}
}

func TestRelayStopsWithinShutdownTimeoutWhenPutRecordsNeverAnswers(t *testing.T) {
	emulatorEnv(t)
	kc := awstest.KinesisClient(t)
	in, out := awstest.CreateStream(t, kc, 1), awstest.CreateStream(t, kc, 1)
	entries := make([]types.PutRecordsRequestEntry, 20)
	for i := range entries {
		entries[i] = types.PutRecordsRequestEntry{Data: fmt.Appendf(nil, "r-%d", i), PartitionKey: aws.String(strconv.Itoa(i))}
	}
	if res, err := kc.PutRecords(t.Context(), &kinesis.PutRecordsInput{StreamName: aws.String(in), Records: entries}); err != nil || aws.ToInt32(res.FailedRecordCount) != 0 {
		t.Fatalf("put the input records: %v", err)
	}
	endpoint, got := hangingPuts(t)
	c := startChild(t, "relay", "--from", in, "--to", out, "--endpoint-url", endpoint, "--shutdown-timeout", "3s")
	waitFor(t, got, "a PutRecords request")
	c.signal(t, syscall.SIGTERM)
	if code := c.exitCode(t); code != 1 {
		t.Errorf("exit status %d; want 1; stderr:\n%s", code, c.stderr)
	}
	line := c.stderr.waitFor(t, "shardflow relay: stopped with")
	m := regexp.MustCompile(`stopped with (\d+) record\(s\) read but not written`).FindStringSubmatch(line)
	if m == nil || m[1] == "0" {
		t.Errorf("want a count of the records not written, got %q", line)
	}
	t.Logf("stderr:\n%s", c.stderr)
}

func TestAStopWhileRetryingADeadEndpointExitsOneWithTheError(t *testing.T) {
	for _, tc := range []struct {
		name string
		args []string
	}{
		{"tail", []string{"tail", "--stream", "s"}},
		{"relay", []string{"relay", "--from", "a", "--to", "b"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := startChild(t, append(tc.args, "--endpoint-url", refusedEndpoint(t))...)
			c.stderr.waitFor(t, "level=WARN", "retrying", "connection refused")
			c.signal(t, syscall.SIGINT)
			if code := c.exitCode(t); code != 1 {
				t.Errorf("exit status %d; want 1; stderr:\n%s", code, c.stderr)
			}
			c.stderr.waitFor(t, "shardflow "+tc.name+": stopped while retrying: ListShards was failing", "connection refused")
		})
	}
}

// TestAStopAtAnEndpointThatNeverAnswersExitsOne starts tail and relay at
// an endpoint that accepts connections and never answers (a hung proxy, a
// wrong port behind a firewall that drops packets): a user must see WARN
// lines while the first call waits, and a Ctrl-C must end the command with
// status 1 and say it never read the stream, not exit 0 as if it had.
func TestAStopAtAnEndpointThatNeverAnswersExitsOne(t *testing.T) {
	for _, tc := range []struct {
		name string
		args []string
		// waitForWarn: signal after the WARN about the waiting call, not
		// as soon as the first request arrived.
		waitForWarn bool
		want        []string // in stderr, on one line
	}{
		{"tail stopped at once", []string{"tail", "--stream", "s"}, false,
			[]string{`shardflow tail: stopped before reading stream "s": ListShards had no answer for`}},
		{"tail stopped after the warning", []string{"tail", "--stream", "s"}, true,
			[]string{`shardflow tail: stopped before reading stream "s": ListShards had no answer for`}},
		{"relay stopped at once", []string{"relay", "--from", "a", "--to", "b"}, false,
			[]string{`shardflow relay: stopped before reading stream "a": ListShards had no answer for`}},
		{"relay with a table stopped after the warning", []string{"relay", "--from", "a", "--to", "b", "--table", "TABLE"}, true,
			[]string{"shardflow relay: stopped while waiting for AWS: ListShards had no answer for"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			endpoint, got := blackHole(t)
			args := append(slices.Clone(tc.args), "--endpoint-url", endpoint)
			if i := slices.Index(args, "TABLE"); i >= 0 {
				// A table that answers, so that the relay gets to
				// Kinesis: other relays may hold every lease, so not
				// having read is no failure, but the unanswered call is.
				emulatorEnv(t)
				args[i] = awstest.CreateTable(t, awstest.DynamoDBClient(t))
				args = append(args, "--dynamodb-endpoint-url", awstest.DynamoDBEndpoint(t))
			}
			c := startChild(t, args...)
			waitFor(t, got, "a request")
			if tc.waitForWarn {
				c.stderr.waitFor(t, "level=WARN", "no answer yet")
			}
			c.signal(t, syscall.SIGINT)
			if code := c.exitCode(t); code != 1 {
				t.Errorf("exit status %d; want 1; stderr:\n%s", code, c.stderr)
			}
			c.stderr.waitFor(t, tc.want...)
		})
	}
}

func TestTailStoppedBySignalWhileReadingExitsZero(t *testing.T) {
	endpoints := emulatorEnv(t)
	kc := awstest.KinesisClient(t)
	stream := awstest.CreateStream(t, kc, 1)
	if _, err := kc.PutRecord(t.Context(), &kinesis.PutRecordInput{StreamName: aws.String(stream), Data: []byte("hello"), PartitionKey: aws.String("k")}); err != nil {
		t.Fatal(err)
	}
	c := startChild(t, append([]string{"tail", "--stream", stream, "--from", "trim-horizon"}, endpoints.kinesis...)...)
	c.stdout.waitFor(t, "hello")
	c.signal(t, syscall.SIGINT)
	if code := c.exitCode(t); code != 0 {
		t.Errorf("exit status %d; want 0; stderr:\n%s", code, c.stderr)
	}
}
