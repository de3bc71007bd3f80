// go-orders: an ordinary HTTP service run behind cellstack's cell runtime. It keeps every piece
// of tenant data through the runtime's tenant state API (docs/services.md), so its data moves
// with the tenant, is fenced during a move and is counted in the tenant's checksum.
//
// It knows nothing of cells: the runtime in front of it identifies the tenant, checks its epoch
// and fence, applies rate limits and load shedding, and passes each admitted request on with
// the headers below. The service passes the tenant and epoch it was given to the state API, and
// passes the state API's refusals (fenced, moved, stale epoch) back unchanged, so the router
// in front of the cell handles a tenant move as it does for the reference service.
//
// Endpoints (all per tenant):
//
//	POST /orders                   {"item": "book", "quantity": 2} -> 201 the order (id from a per-tenant sequence)
//	GET  /orders/{id}              -> 200 the order, 404
//	GET  /orders                   -> 200 {"orders": [ids]} (first 1000)
//	POST /orders/{id}/status       {"status": "paid"} -> 200, 409 not allowed from its status
//	POST /tallies/{name}           -> 200 {"value": n}: read-modify-write with compare-and-set
//	POST /jobs                     {"writes": 100, "intervalMs": 20} -> 202: a background writer
//	GET  /jobs/{id}                -> 200 {"job", "writes"}: the writes of job id the tenant holds
//	GET  /stats                    -> 200 {"requests": n}: requests this process served the tenant
//	                                  (all but /stats itself: reading the counter leaves it as it is)
//	GET  /healthz                  -> 200 (the runtime's health check)
//
// Flags: -listen (default 127.0.0.1:$PORT, else 127.0.0.1:8081: loopback only, the runtime is
// the pod's only way in), -state (default $CELLSTACK_STATE_URL, else http://127.0.0.1:7070),
// -fail-ratio (a share of requests answered 500 on purpose: a broken version for rollouts),
// -version (reported by /healthz).
package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log"
	"math/rand/v2"
	"net/http"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// The header contract of cellstack (crds/src/wire.rs).
const (
	headerTenant    = "x-cellstack-tenant"
	headerEpoch     = "x-cellstack-epoch"
	headerRequestID = "x-request-id"
	headerError     = "x-cellstack-error"
)

// Headers of a state API refusal that the router in front of the cell acts on.
var passedBack = []string{headerError, "retry-after", "x-cellstack-moved-to", headerEpoch}

type server struct {
	state     string
	client    *http.Client
	failRatio float64
	version   string

	mu       sync.Mutex
	requests map[string]int64
	jobs     atomic.Int64
}

// caller names the tenant (and the epoch it was admitted at) on every state API call, as the
// runtime named them to us.
type caller struct {
	tenant, epoch, requestID string
}

func callerOf(r *http.Request) (caller, error) {
	c := caller{
		tenant:    r.Header.Get(headerTenant),
		epoch:     r.Header.Get(headerEpoch),
		requestID: r.Header.Get(headerRequestID),
	}
	if c.tenant == "" {
		return c, errors.New("no " + headerTenant + " header: this service runs behind the cell runtime")
	}
	return c, nil
}

// stateError is a state API answer other than success, passed back to the client unchanged.
type stateError struct {
	status int
	header http.Header
	body   []byte
}

func (e *stateError) Error() string {
	return fmt.Sprintf("state API answered %d: %s", e.status, bytes.TrimSpace(e.body))
}

// call makes one state API call for c; a non-2xx answer comes back as *stateError.
func (s *server) call(ctx context.Context, c caller, method, path string, body []byte, extra map[string]string) (*http.Response, []byte, error) {
	req, err := http.NewRequestWithContext(ctx, method, s.state+path, bytes.NewReader(body))
	if err != nil {
		return nil, nil, err
	}
	req.Header.Set(headerTenant, c.tenant)
	if c.epoch != "" {
		req.Header.Set(headerEpoch, c.epoch)
	}
	if c.requestID != "" {
		req.Header.Set(headerRequestID, c.requestID)
	}
	for k, v := range extra {
		req.Header.Set(k, v)
	}
	resp, err := s.client.Do(req)
	if err != nil {
		return nil, nil, err
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, 4<<20))
	if err != nil {
		return nil, nil, err
	}
	if resp.StatusCode/100 != 2 {
		return resp, data, &stateError{status: resp.StatusCode, header: resp.Header, body: data}
	}
	return resp, data, nil
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("content-type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

func fail(w http.ResponseWriter, status int, code, message string) {
	writeJSON(w, status, map[string]string{"error": code, "message": message})
}

// answer passes a state API refusal back as it came; anything else is a 502.
func answer(w http.ResponseWriter, err error) {
	var se *stateError
	if errors.As(err, &se) {
		for _, h := range passedBack {
			if v := se.header.Get(h); v != "" {
				w.Header().Set(h, v)
			}
		}
		w.Header().Set("content-type", "application/json")
		w.WriteHeader(se.status)
		_, _ = w.Write(se.body)
		return
	}
	fail(w, http.StatusBadGateway, "state_api", err.Error())
}

type order struct {
	ID       int64  `json:"id"`
	Item     string `json:"item"`
	Quantity int    `json:"quantity"`
	Status   string `json:"status"`
}

// Which status an order may go to from which.
var transitions = map[string][]string{
	"placed":  {"paid", "cancelled"},
	"paid":    {"shipped", "cancelled"},
	"shipped": {"delivered"},
}

func allowed(from, to string) bool {
	for _, s := range transitions[from] {
		if s == to {
			return true
		}
	}
	return false
}

// increment adds one to counter name of c's tenant, atomically, and gives the new value.
func (s *server) increment(ctx context.Context, c caller, name string) (int64, error) {
	_, body, err := s.call(ctx, c, http.MethodPost, "/v1/counters/"+name+"/increment", []byte(`{"by":1}`), nil)
	if err != nil {
		return 0, err
	}
	var v struct {
		Value int64 `json:"value"`
	}
	if err := json.Unmarshal(body, &v); err != nil {
		return 0, fmt.Errorf("counter answer: %w", err)
	}
	return v.Value, nil
}

func (s *server) createOrder(w http.ResponseWriter, r *http.Request, c caller) {
	var in struct {
		Item     string `json:"item"`
		Quantity int    `json:"quantity"`
	}
	if err := json.NewDecoder(io.LimitReader(r.Body, 64<<10)).Decode(&in); err != nil || in.Item == "" || in.Quantity < 1 {
		fail(w, http.StatusBadRequest, "bad_request", `body must be {"item": "<name>", "quantity": <n ≥ 1>}`)
		return
	}
	id, err := s.increment(r.Context(), c, "order-seq")
	if err != nil {
		answer(w, err)
		return
	}
	o := order{ID: id, Item: in.Item, Quantity: in.Quantity, Status: "placed"}
	data, _ := json.Marshal(o)
	// Create only: a sequence number is never reused, so an existing order means a bug.
	if _, _, err := s.call(r.Context(), c, http.MethodPut, fmt.Sprintf("/v1/items/order-%d", id), data, map[string]string{"if-none-match": "*"}); err != nil {
		answer(w, err)
		return
	}
	writeJSON(w, http.StatusCreated, o)
}

func (s *server) getOrder(w http.ResponseWriter, r *http.Request, c caller) {
	id, err := strconv.ParseInt(r.PathValue("id"), 10, 64)
	if err != nil {
		fail(w, http.StatusBadRequest, "bad_request", "order id must be a number")
		return
	}
	_, body, err := s.call(r.Context(), c, http.MethodGet, fmt.Sprintf("/v1/items/order-%d", id), nil, nil)
	if err != nil {
		answer(w, err)
		return
	}
	w.Header().Set("content-type", "application/json")
	_, _ = w.Write(body)
}

func (s *server) listOrders(w http.ResponseWriter, r *http.Request, c caller) {
	ids := []int64{}
	cursor := "0"
	for len(ids) < 1000 {
		_, body, err := s.call(r.Context(), c, http.MethodGet, "/v1/items?limit=500&cursor="+cursor, nil, nil)
		if err != nil {
			answer(w, err)
			return
		}
		var page struct {
			Items  []string `json:"items"`
			Cursor *uint64  `json:"cursor"`
		}
		if err := json.Unmarshal(body, &page); err != nil {
			fail(w, http.StatusBadGateway, "state_api", err.Error())
			return
		}
		for _, name := range page.Items {
			if id, err := strconv.ParseInt(strings.TrimPrefix(name, "order-"), 10, 64); err == nil && strings.HasPrefix(name, "order-") {
				ids = append(ids, id)
			}
		}
		if page.Cursor == nil {
			break
		}
		cursor = strconv.FormatUint(*page.Cursor, 10)
	}
	writeJSON(w, http.StatusOK, map[string]any{"orders": ids})
}

// maxConflicts bounds readModifyWrite's attempts: with n writers of one item at once, each
// round lets at least one through, so the last may lose n-1 times.
const maxConflicts = 100

// readModifyWrite reads item name with its ETag, applies change, and writes it back only if it
// is unchanged (If-Match); on a conflict it starts over, up to maxConflicts times with jittered
// backoff.
func (s *server) readModifyWrite(ctx context.Context, c caller, name string, change func(old []byte) ([]byte, error)) ([]byte, error) {
	for attempt := 0; attempt < maxConflicts; attempt++ {
		var old []byte
		condition := map[string]string{"if-none-match": "*"}
		resp, body, err := s.call(ctx, c, http.MethodGet, "/v1/items/"+name, nil, nil)
		var se *stateError
		switch {
		case err == nil:
			old = body
			condition = map[string]string{"if-match": resp.Header.Get("etag")}
		case errors.As(err, &se) && se.status == http.StatusNotFound:
		default:
			return nil, err
		}
		next, err := change(old)
		if err != nil {
			return nil, err
		}
		_, _, err = s.call(ctx, c, http.MethodPut, "/v1/items/"+name, next, condition)
		if err == nil {
			return next, nil
		}
		if !errors.As(err, &se) || se.status != http.StatusPreconditionFailed {
			return nil, err
		}
		// Someone else wrote it in between: read again.
		time.Sleep(time.Duration(rand.IntN(1+attempt*2)) * time.Millisecond)
	}
	return nil, fmt.Errorf("item %s kept changing under us (%d conflicts)", name, maxConflicts)
}

var errTransition = errors.New("transition not allowed")

func (s *server) setStatus(w http.ResponseWriter, r *http.Request, c caller) {
	id, err := strconv.ParseInt(r.PathValue("id"), 10, 64)
	var in struct {
		Status string `json:"status"`
	}
	if err != nil || json.NewDecoder(io.LimitReader(r.Body, 4<<10)).Decode(&in) != nil || in.Status == "" {
		fail(w, http.StatusBadRequest, "bad_request", `POST /orders/<number>/status with {"status": "<status>"}`)
		return
	}
	var from string
	data, err := s.readModifyWrite(r.Context(), c, fmt.Sprintf("order-%d", id), func(old []byte) ([]byte, error) {
		if old == nil {
			return nil, os.ErrNotExist
		}
		var o order
		if err := json.Unmarshal(old, &o); err != nil {
			return nil, err
		}
		from = o.Status
		if !allowed(o.Status, in.Status) {
			return nil, errTransition
		}
		o.Status = in.Status
		return json.Marshal(o)
	})
	switch {
	case errors.Is(err, os.ErrNotExist):
		fail(w, http.StatusNotFound, "not_found", fmt.Sprintf("order %d does not exist", id))
	case errors.Is(err, errTransition):
		fail(w, http.StatusConflict, "conflict", fmt.Sprintf("order %d is %s: it cannot become %s", id, from, in.Status))
	case err != nil:
		answer(w, err)
	default:
		w.Header().Set("content-type", "application/json")
		_, _ = w.Write(data)
	}
}

// tally adds one to item tally-<name> by read-modify-write, to show compare-and-set at work
// (the state API's counters do this in one call; see increment).
func (s *server) tally(w http.ResponseWriter, r *http.Request, c caller) {
	name := r.PathValue("name")
	data, err := s.readModifyWrite(r.Context(), c, "tally-"+name, func(old []byte) ([]byte, error) {
		n, _ := strconv.ParseInt(string(old), 10, 64)
		return []byte(strconv.FormatInt(n+1, 10)), nil
	})
	if err != nil {
		answer(w, err)
		return
	}
	value, _ := strconv.ParseInt(string(data), 10, 64)
	writeJSON(w, http.StatusOK, map[string]int64{"value": value})
}

// startJob starts a background writer for the tenant: `writes` increments of counter
// job-<id>, one every intervalMs. It names the tenant and the epoch of the request that
// started it, so a fence pauses it and a move ends it (its writes so far move with the tenant).
func (s *server) startJob(w http.ResponseWriter, r *http.Request, c caller) {
	var in struct {
		Writes     int `json:"writes"`
		IntervalMs int `json:"intervalMs"`
	}
	if err := json.NewDecoder(io.LimitReader(r.Body, 4<<10)).Decode(&in); err != nil || in.Writes < 1 || in.Writes > 100000 || in.IntervalMs < 1 {
		fail(w, http.StatusBadRequest, "bad_request", `body must be {"writes": 1..100000, "intervalMs": ≥ 1}`)
		return
	}
	id := fmt.Sprintf("%d-%d", time.Now().UnixNano(), s.jobs.Add(1))
	go s.runJob(c, id, in.Writes, time.Duration(in.IntervalMs)*time.Millisecond)
	writeJSON(w, http.StatusAccepted, map[string]string{"job": id, "counter": "job-" + id})
}

func (s *server) runJob(c caller, id string, writes int, interval time.Duration) {
	c.requestID = "job-" + id
	acked, refused := 0, 0
	defer func() {
		log.Printf("job %s of tenant %s ended: acked=%d refused=%d", id, c.tenant, acked, refused)
	}()
	for acked < writes {
		time.Sleep(interval)
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		_, err := s.increment(ctx, c, "job-"+id)
		cancel()
		var se *stateError
		switch {
		case err == nil:
			acked++
		case errors.As(err, &se) && se.status == http.StatusServiceUnavailable:
			// Fenced (a move is flipping) or the datastore is away: nothing was written; the
			// same write is tried again.
			refused++
			log.Printf("job %s of tenant %s: write refused (%s), retrying", id, c.tenant, se.header.Get(headerError))
		case errors.As(err, &se):
			// Moved to another cell, or a newer epoch: this lane no longer serves the tenant.
			refused++
			log.Printf("job %s of tenant %s: write refused (%s): stopping", id, c.tenant, se.header.Get(headerError))
			return
		default:
			refused++
			log.Printf("job %s of tenant %s: %v, retrying", id, c.tenant, err)
		}
	}
}

// jobStatus answers how many of a job's writes the tenant holds (wherever the tenant lives now:
// the count is its data, moved with it).
func (s *server) jobStatus(w http.ResponseWriter, r *http.Request, c caller) {
	id := r.PathValue("id")
	_, body, err := s.call(r.Context(), c, http.MethodGet, "/v1/counters/job-"+id, nil, nil)
	if err != nil {
		answer(w, err)
		return
	}
	var v struct {
		Value int64 `json:"value"`
	}
	if err := json.Unmarshal(body, &v); err != nil {
		fail(w, http.StatusBadGateway, "state_api", err.Error())
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"job": id, "writes": v.Value})
}

func (s *server) stats(w http.ResponseWriter, r *http.Request, c caller) {
	s.mu.Lock()
	n := s.requests[c.tenant]
	s.mu.Unlock()
	writeJSON(w, http.StatusOK, map[string]any{"tenant": c.tenant, "requests": n, "version": s.version})
}

// tenant wraps a handler: counts the request for its tenant, so /stats shows every request
// that reached this process's handlers.
func (s *server) tenant(h func(http.ResponseWriter, *http.Request, caller)) http.HandlerFunc {
	return s.withCaller(true, h)
}

// withCaller wraps a handler with the caller the runtime named, counting the request for its
// tenant when count is set.
func (s *server) withCaller(count bool, h func(http.ResponseWriter, *http.Request, caller)) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		c, err := callerOf(r)
		if err != nil {
			fail(w, http.StatusBadRequest, "bad_request", err.Error())
			return
		}
		if count {
			s.mu.Lock()
			s.requests[c.tenant]++
			s.mu.Unlock()
		}
		h(w, r, c)
	}
}

// failing answers a share of all requests (any path but /healthz) 500 on purpose: a broken
// version for rollout drills (-fail-ratio).
func (s *server) failing(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/healthz" && s.failRatio > 0 && rand.Float64() < s.failRatio {
			fail(w, http.StatusInternalServerError, "internal", "failed on purpose (-fail-ratio)")
			return
		}
		next.ServeHTTP(w, r)
	})
}

func main() {
	port := os.Getenv("PORT")
	if port == "" {
		port = "8081"
	}
	state := os.Getenv("CELLSTACK_STATE_URL")
	if state == "" {
		state = "http://127.0.0.1:7070"
	}
	listen := flag.String("listen", "127.0.0.1:"+port, "address to listen on (loopback: only the cell runtime reaches it)")
	stateURL := flag.String("state", state, "the cell runtime's tenant state API")
	failRatio := flag.Float64("fail-ratio", 0, "share of requests answered 500 on purpose (0..1)")
	version := flag.String("version", "v1", "version reported by /healthz and /stats")
	flag.Parse()
	if *failRatio < 0 || *failRatio > 1 {
		log.Fatalf("-fail-ratio must be between 0 and 1, not %v", *failRatio)
	}

	s := &server{
		state: strings.TrimRight(*stateURL, "/"),
		client: &http.Client{
			Timeout:   5 * time.Second,
			Transport: &http.Transport{MaxIdleConnsPerHost: 64, IdleConnTimeout: 90 * time.Second},
		},
		failRatio: *failRatio,
		version:   *version,
		requests:  map[string]int64{},
	}
	mux := http.NewServeMux()
	mux.HandleFunc("POST /orders", s.tenant(s.createOrder))
	mux.HandleFunc("GET /orders", s.tenant(s.listOrders))
	mux.HandleFunc("GET /orders/{id}", s.tenant(s.getOrder))
	mux.HandleFunc("POST /orders/{id}/status", s.tenant(s.setStatus))
	mux.HandleFunc("POST /tallies/{name}", s.tenant(s.tally))
	mux.HandleFunc("POST /jobs", s.tenant(s.startJob))
	mux.HandleFunc("GET /jobs/{id}", s.tenant(s.jobStatus))
	mux.HandleFunc("GET /stats", s.withCaller(false, s.stats))
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, map[string]string{"status": "ok", "version": s.version})
	})

	srv := &http.Server{Addr: *listen, Handler: s.failing(mux), ReadHeaderTimeout: 5 * time.Second}
	go func() {
		stop := make(chan os.Signal, 1)
		signal.Notify(stop, syscall.SIGTERM, os.Interrupt)
		<-stop
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_ = srv.Shutdown(ctx)
	}()
	log.Printf("go-orders %s listening on %s, state API %s", s.version, *listen, s.state)
	if err := srv.ListenAndServe(); err != nil && !errors.Is(err, http.ErrServerClosed) {
		log.Fatal(err)
	}
}
