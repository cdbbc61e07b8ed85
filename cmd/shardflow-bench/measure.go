package main

import (
	"bufio"
	"fmt"
	"io"
	"math"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"text/tabwriter"
	"time"
)

// sample is one run of one side of a comparison.
type sample struct {
	records int
	wall    time.Duration
	cpu     time.Duration // user + system CPU of the process; negative if unknown
	mallocs uint64        // heap allocations of the process
}

// meter takes a sample between begin and the first finish. finish may be
// called from any goroutine, and more than once.
type meter struct {
	records int
	start   time.Time
	cpu0    time.Duration
	m0      uint64
	once    sync.Once
	s       sample
}

func (m *meter) begin(records int) {
	m.records = records
	runtime.GC() // settle the setup's garbage before measuring
	m.m0 = mallocs()
	m.cpu0 = cpuTime()
	m.start = time.Now()
}

func (m *meter) finish() {
	m.once.Do(func() {
		wall := time.Since(m.start)
		cpu := cpuTime()
		if cpu >= 0 && m.cpu0 >= 0 {
			cpu -= m.cpu0
		} else {
			cpu = -1
		}
		m.s = sample{records: m.records, wall: wall, cpu: cpu, mallocs: mallocs() - m.m0}
	})
}

func (m *meter) sample() sample { return m.s }

func mallocs() uint64 {
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return ms.Mallocs
}

// metric is one figure computed from a sample.
type metric struct {
	name   string
	format func(float64) string
	of     func(sample) float64
}

func fixed(prec int) func(float64) string {
	return func(v float64) string { return strconv.FormatFloat(v, 'f', prec, 64) }
}

func thousands(v float64) string { return grouped(int(math.Round(v))) }

var (
	nsPerRecord = metric{"ns/record", thousands, func(s sample) float64 {
		return float64(s.wall.Nanoseconds()) / float64(s.records)
	}}
	cpuNsPerRecord = metric{"CPU ns/record", thousands, func(s sample) float64 {
		if s.cpu < 0 {
			return math.NaN()
		}
		return float64(s.cpu.Nanoseconds()) / float64(s.records)
	}}
	cpuUsPerRecord = metric{"CPU µs/record", fixed(1), func(s sample) float64 {
		if s.cpu < 0 {
			return math.NaN()
		}
		return s.cpu.Seconds() * 1e6 / float64(s.records)
	}}
	allocsPerRecord = metric{"allocs/record", fixed(2), func(s sample) float64 {
		return float64(s.mallocs) / float64(s.records)
	}}
	recordsPerSec = metric{"records/s", thousands, func(s sample) float64 {
		return float64(s.records) / s.wall.Seconds()
	}}
	mbPerSec = metric{"MB/s (payload)", thousands, func(s sample) float64 {
		return float64(s.records) * 100 / 1e6 / s.wall.Seconds()
	}}
)

// table collects rows of "case, metric, shardflow, floor, ratio".
type table struct {
	title string
	rows  [][]string
	notes []string
}

func newTable(title string) *table { return &table{title: title} }

// add appends one row per metric. floor may be nil when there is nothing to
// compare with.
func (t *table) add(name string, lib, floor []sample, metrics ...metric) {
	for _, m := range metrics {
		l := summarize(lib, m)
		row := []string{name, m.name, l.String(m.format), "-", "-"}
		if floor != nil {
			f := summarize(floor, m)
			row[3] = f.String(m.format)
			// No ratio of figures that print as zero (0.00 allocs/record
			// may be 0.004): it would mean nothing.
			if !math.IsNaN(f.median) && !math.IsNaN(l.median) && !isZero(m.format(f.median)) {
				row[4] = fmt.Sprintf("%.2fx", l.median/f.median)
			}
		}
		t.rows = append(t.rows, row)
	}
}

func (t *table) note(format string, args ...any) {
	t.notes = append(t.notes, fmt.Sprintf(format, args...))
}

func (t *table) print(w io.Writer) {
	fmt.Fprintln(w, wrap(t.title, 100, ""))
	fmt.Fprintln(w)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "case\tmetric\tshardflow\tfloor\tshardflow/floor\t")
	for _, r := range t.rows {
		fmt.Fprintln(tw, strings.Join(r, "\t")+"\t")
	}
	tw.Flush()
	for _, n := range t.notes {
		fmt.Fprintln(w, wrap("note: "+n, 100, "      "))
	}
	fmt.Fprintln(w)
}

// wrap breaks s into lines of at most width characters at spaces, indenting
// the continuation lines.
func wrap(s string, width int, indent string) string {
	var b strings.Builder
	line := 0
	for i, word := range strings.Fields(s) {
		n := len([]rune(word))
		if i > 0 && line+1+n > width {
			b.WriteString("\n" + indent)
			line = len(indent)
		} else if i > 0 {
			b.WriteByte(' ')
			line++
		}
		b.WriteString(word)
		line += n
	}
	return b.String()
}

type summary struct{ median, min, max float64 }

func summarize(samples []sample, m metric) summary {
	vals := make([]float64, len(samples))
	for i, s := range samples {
		vals[i] = m.of(s)
	}
	return summary{median: median(vals), min: slices.Min(vals), max: slices.Max(vals)}
}

func (s summary) String(format func(float64) string) string {
	if math.IsNaN(s.median) {
		return "n/a"
	}
	return format(s.median) + " (" + format(s.min) + "–" + format(s.max) + ")"
}

// isZero reports whether a formatted figure reads as zero.
func isZero(formatted string) bool {
	return strings.Trim(formatted, "0.,") == ""
}

// median returns the middle value, or the mean of the two middle ones.
func median(vals []float64) float64 {
	v := slices.Clone(vals)
	slices.Sort(v)
	if len(v) == 0 {
		return math.NaN()
	}
	if len(v)%2 == 1 {
		return v[len(v)/2]
	}
	return (v[len(v)/2-1] + v[len(v)/2]) / 2
}

// grouped formats n with thousands separators: 1,000,000.
func grouped(n int) string {
	s := strconv.Itoa(n)
	for i := len(s) - 3; i > 0; i -= 3 {
		s = s[:i] + "," + s[i:]
	}
	return s
}

// printHeader prints the command line and the machine.
func printHeader(w io.Writer) {
	fmt.Fprintf(w, "shardflow-bench: shardflow next to the hand-written code it replaces\n\n")
	// go run builds into a temporary directory: print the command's name only.
	fmt.Fprintf(w, "command  %s\n", strings.Join(append([]string{filepath.Base(os.Args[0])}, os.Args[1:]...), " "))
	fmt.Fprintf(w, "date     %s\n", time.Now().UTC().Format(time.RFC3339))
	fmt.Fprintf(w, "go       %s %s/%s\n", runtime.Version(), runtime.GOOS, runtime.GOARCH)
	fmt.Fprintf(w, "cpu      %s, %d cores, GOMAXPROCS %d\n", cpuModel(), runtime.NumCPU(), runtime.GOMAXPROCS(0))
	if load, err := os.ReadFile("/proc/loadavg"); err == nil {
		fields := strings.Fields(string(load))
		if len(fields) >= 3 {
			fmt.Fprintf(w, "load     %s %s %s (1, 5, 15 min, at start: other work on the machine)\n", fields[0], fields[1], fields[2])
		}
	}
	fmt.Fprintln(w)
}

// cpuModel returns the first "model name" of /proc/cpuinfo, or "unknown CPU".
func cpuModel() string {
	f, err := os.Open("/proc/cpuinfo")
	if err != nil {
		return "unknown CPU"
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if k, v, ok := strings.Cut(sc.Text(), ":"); ok && strings.TrimSpace(k) == "model name" {
			return strings.TrimSpace(v)
		}
	}
	return "unknown CPU"
}
