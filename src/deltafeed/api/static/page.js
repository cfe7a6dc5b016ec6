// deltafeed's live chart page: pick an instrument, price side and timeframe; the history comes from
// GET /candles/..., then the candle is followed over the /ws subscribe op. Final candles are drawn
// filled, provisional ones hollow and grey, the forming one hollow with a dashed-looking amber
// outline; gaps (missing open times) and failover switches are marked on the chart. The status strip
// polls /streaming/status and /health.
//
// The ?token= of the page's URL is sent as a bearer header on requests and as ?token= on the
// WebSocket (a browser cannot set headers there). What the page drew is mirrored in
// #chart-state's data-* attributes and in window.deltafeedPage, for tests and for curious people.
(function () {
  "use strict";

  var LC = window.LightweightCharts;
  var params = new URLSearchParams(location.search);
  var token = params.get("token");
  var HISTORY = 500; // candles asked for over HTTP
  var MAX_BARS = 5000; // drawn at most (the oldest are dropped)
  var UNIT_SECONDS = { s: 1, m: 60, h: 3600, d: 86400, w: 604800 };
  var COLORS = {
    up: "#26a69a", down: "#ef5350", provisional: "#9e9e9e", forming: "#f0b90b",
    gap: "#ff9800", switch: "#ba68c8", hollow: "rgba(0, 0, 0, 0)",
  };

  var page = (window.deltafeedPage = {
    bars: 0, lastTime: null, lastClose: null, updates: 0, gaps: 0, switches: 0, provisional: 0, forming: 0,
    ws: "connecting", ready: false, instrument: null, timeframe: null, price: null, error: null,
  });
  var $ = function (id) { return document.getElementById(id); };

  // --- requests -----------------------------------------------------------------------------------

  function NeedsToken(message) { this.message = message; }

  function api(path) {
    var headers = token ? { Authorization: "Bearer " + token } : {};
    return fetch(path, { headers: headers }).then(function (r) {
      if (r.status === 401) {
        throw new NeedsToken(r.statusText);
      }
      return r.json().then(function (body) { return { status: r.status, body: body }; });
    });
  }

  function needToken() {
    var how = "the token given to <code>--api-token</code> or <code>DELTAFEED_API_TOKEN</code>";
    $("auth").innerHTML = token
      ? "The token in this page's address was refused. Open the page as <code>" + location.pathname +
        "?token=TOKEN</code> with " + how + "."
      : "This deltafeed needs its API token. Open the page as <code>" + location.pathname +
        "?token=TOKEN</code>, with " + how + ".";
    $("auth").hidden = false;
    page.error = "token";
    mirror();
  }

  function problem(text) {
    $("problem").textContent = text;
    $("problem").hidden = !text;
    page.error = text || null;
  }

  function failed(e) {
    if (e instanceof NeedsToken) needToken();
    else problem(String(e && e.message ? e.message : e));
  }

  // --- the chart ----------------------------------------------------------------------------------

  var chart = LC.createChart($("chart"), {
    autoSize: true,
    layout: { background: { color: "#131722" }, textColor: "#d1d4dc" },
    grid: { vertLines: { color: "#1f2430" }, horzLines: { color: "#1f2430" } },
    timeScale: { timeVisible: true, secondsVisible: true, borderColor: "#2a2e39" },
    rightPriceScale: { borderColor: "#2a2e39" },
  });
  var candles = chart.addSeries(LC.CandlestickSeries, {
    upColor: COLORS.up, downColor: COLORS.down, borderUpColor: COLORS.up, borderDownColor: COLORS.down,
    wickUpColor: COLORS.up, wickDownColor: COLORS.down,
  });
  var volume = chart.addSeries(LC.HistogramSeries, { priceFormat: { type: "volume" }, priceScaleId: "" });
  volume.priceScale().applyOptions({ scaleMargins: { top: 0.8, bottom: 0 } });
  candles.priceScale().applyOptions({ scaleMargins: { top: 0.08, bottom: 0.25 } });
  var markers = LC.createSeriesMarkers(candles, []);
  // For tests and the console: the candles held (oldest first), what the chart series draws, the markers.
  page.snapshot = function () { return sortedTimes().map(function (t) { return bars.get(t); }); };
  page.drawn = function () { return candles.data(); };
  page.markers = function () { return markers.markers(); };

  var bars = new Map(); // open time (s) -> {time, open, high, low, close, volume, trades, state}
  var switchTimes = new Map(); // spanning candle's open time (s) -> "from → to"
  var sub = null; // {instrument (as subscribed), name (canonical, from the reply), timeframe, generation}
  var generation = 0;
  var pending = []; // live candle messages that arrived before the history

  function barStyle(b) {
    var up = b.close >= b.open;
    if (b.state === "final") {
      var c = up ? COLORS.up : COLORS.down;
      return { color: c, borderColor: c, wickColor: c };
    }
    if (b.state === "provisional") {
      return { color: COLORS.hollow, borderColor: COLORS.provisional, wickColor: COLORS.provisional };
    }
    return { color: COLORS.hollow, borderColor: COLORS.forming, wickColor: COLORS.forming };
  }

  function candleItem(b) {
    var s = barStyle(b);
    return { time: b.time, open: b.open, high: b.high, low: b.low, close: b.close,
             color: s.color, borderColor: s.borderColor, wickColor: s.wickColor };
  }

  function volumeItem(b) {
    var color = b.state === "final" ? (b.close >= b.open ? "rgba(38,166,154,0.45)" : "rgba(239,83,80,0.45)")
      : b.state === "provisional" ? "rgba(158,158,158,0.35)" : "rgba(240,185,11,0.35)";
    return { time: b.time, value: b.volume, color: color };
  }

  function sortedTimes() {
    return Array.from(bars.keys()).sort(function (a, b) { return a - b; });
  }

  function drawAll() {
    var times = sortedTimes();
    while (times.length > MAX_BARS) bars.delete(times.shift());
    var list = times.map(function (t) { return bars.get(t); });
    candles.setData(list.map(candleItem));
    volume.setData(list.map(volumeItem));
    drawMarkers(times);
  }

  function drawMarkers(times) {
    times = times || sortedTimes();
    var tf = sub ? sub.timeframe : "1m";
    var list = [];
    var gaps = 0;
    for (var i = 1; i < times.length; i++) {
      var missing = openTimesBetween(times[i - 1], times[i], tf);
      if (missing > 0) {
        gaps++;
        list.push({ time: times[i], position: "aboveBar", shape: "arrowDown", color: COLORS.gap,
                    text: "gap: " + missing + " missing" });
      }
    }
    var switches = 0;
    switchTimes.forEach(function (text, t) {
      if (bars.has(t)) {
        switches++;
        list.push({ time: t, position: "belowBar", shape: "square", color: COLORS.switch, text: "switch " + text });
      }
    });
    list.sort(function (a, b) { return a.time - b.time; });
    markers.setMarkers(list);
    page.gaps = gaps;
    page.switches = switches;
  }

  // How many candles of timeframe tf (Ns Nm Nh Nd 1w, or 1M on the calendar) open strictly between
  // open times a and b (seconds): the missing ones when both are drawn.
  function openTimesBetween(a, b, tf) {
    if (tf === "1M") {
      var da = new Date(a * 1000);
      var db = new Date(b * 1000);
      return (db.getUTCFullYear() - da.getUTCFullYear()) * 12 + db.getUTCMonth() - da.getUTCMonth() - 1;
    }
    var m = /^(\d+)([smhdw])$/.exec(tf);
    var step = m ? Number(m[1]) * UNIT_SECONDS[m[2]] : 60;
    return Math.round((b - a) / step) - 1;
  }

  function toBar(row) {
    // A row of GET /candles: [open_time ms, open, high, low, close, volume, trades, state].
    return { time: row[0] / 1000, open: row[1], high: row[2], low: row[3], close: row[4],
             volume: row[5], trades: row[6], state: row[7] };
  }

  function fromMessage(d) {
    return { time: d.open_time / 1000, open: d.open, high: d.high, low: d.low, close: d.close,
             volume: d.volume, trades: d.trades, state: d.state || (d.closed ? "provisional" : "forming") };
  }

  function applyLive(b) {
    var last = page.lastTime;
    var isNew = !bars.has(b.time);
    bars.set(b.time, b);
    page.updates++;
    if (last === null || b.time >= last) {
      candles.update(candleItem(b));
      volume.update(volumeItem(b));
      if (isNew) drawMarkers();
    } else {
      drawAll(); // an older candle was repaired or made final: redraw it in place
    }
    mirror();
  }

  function mirror() {
    var times = sortedTimes();
    var lastTime = times.length ? times[times.length - 1] : null;
    var provisional = 0;
    var forming = 0;
    bars.forEach(function (b) {
      if (b.state === "provisional") provisional++;
      else if (b.state === "forming") forming++;
    });
    page.bars = times.length;
    page.lastTime = lastTime;
    page.lastClose = lastTime === null ? null : bars.get(lastTime).close;
    page.provisional = provisional;
    page.forming = forming;
    var ds = $("chart-state").dataset;
    ds.bars = String(page.bars);
    ds.lastTime = lastTime === null ? "" : String(lastTime * 1000);
    ds.lastClose = page.lastClose === null ? "" : String(page.lastClose);
    ds.updates = String(page.updates);
    ds.gaps = String(page.gaps);
    ds.switches = String(page.switches);
    ds.provisional = String(provisional);
    ds.forming = String(forming);
    ds.ws = page.ws;
    ds.ready = String(page.ready);
    ds.instrument = page.instrument || "";
    ds.timeframe = page.timeframe || "";
    ds.error = page.error || "";
    var series = $("st-series");
    series.textContent = page.instrument
      ? page.instrument + " " + page.timeframe + ": " + page.bars + " candles (" + provisional + " provisional, " +
        forming + " forming), " + page.gaps + " gaps, " + page.switches + " switches, " + page.updates + " live updates"
      : "";
    if (lastTime !== null && !crosshairShown) showOhlc(bars.get(lastTime));
  }

  var crosshairShown = false;
  function showOhlc(b) {
    if (!b) { $("ohlc").textContent = ""; return; }
    $("ohlc").textContent = new Date(b.time * 1000).toISOString().replace(".000Z", "Z") + "  O " + b.open +
      "  H " + b.high + "  L " + b.low + "  C " + b.close + "  V " + b.volume + "  trades " + b.trades + "  " + b.state;
  }
  chart.subscribeCrosshairMove(function (p) {
    crosshairShown = Boolean(p && p.time !== undefined && bars.has(p.time));
    if (crosshairShown) showOhlc(bars.get(p.time));
  });

  // --- the WebSocket ------------------------------------------------------------------------------

  var ws = null;
  var wsRetry = 500;

  function wsUrl() {
    return (location.protocol === "https:" ? "wss://" : "ws://") + location.host + "/ws" +
      (token ? "?token=" + encodeURIComponent(token) : "");
  }

  function setWs(state) {
    page.ws = state;
    var el = $("st-ws");
    el.textContent = "WebSocket: " + state;
    el.className = "pill " + (state === "open" ? "ok" : "bad");
    mirror();
  }

  function connect() {
    ws = new WebSocket(wsUrl());
    ws.onopen = function () {
      wsRetry = 500;
      setWs("open");
      if (sub) send({ op: "subscribe", instrument: sub.instrument, timeframe: sub.timeframe, snapshot: 3 });
      if (book.name) send({ op: "subscribe_book", instrument: book.name, depth: BOOK_DEPTH });
    };
    ws.onclose = function () {
      setWs("closed");
      if (sub) sub.name = null; // resubscribed on the next connection
      setTimeout(connect, wsRetry);
      wsRetry = Math.min(wsRetry * 2, 10000);
    };
    ws.onmessage = function (ev) {
      var msg;
      try { msg = JSON.parse(ev.data); } catch (e) { return; }
      onMessage(msg);
    };
  }

  function send(op) {
    if (ws && ws.readyState === WebSocket.OPEN) ws.send(JSON.stringify(op));
  }

  function onMessage(msg) {
    if (msg.type === "book_snapshot" || msg.type === "book_delta") return onBook(msg);
    if (!sub) return;
    if (msg.type === "subscribed" && msg.timeframe === sub.timeframe) {
      sub.name = msg.instrument;
    } else if (msg.type === "candle") {
      if (msg.instrument !== sub.name || msg.data.timeframe !== sub.timeframe) return;
      var b = fromMessage(msg.data);
      if (!page.ready) pending.push(b);
      else applyLive(b);
    } else if (msg.type === "switch") {
      if (msg.instrument !== sub.name) return;
      var at = msg.data.spanning && msg.data.spanning[sub.timeframe];
      if (at !== undefined) {
        switchTimes.set(at / 1000, msg.data.from + " → " + msg.data.to);
        drawMarkers();
        mirror();
      }
    } else if (msg.type === "error") {
      problem("WebSocket: " + msg.message);
    }
  }

  // --- choosing what to show ----------------------------------------------------------------------

  var catalog = new Map(); // base name -> [{side, name}]

  function fill(select, values, chosen) {
    select.innerHTML = "";
    values.forEach(function (v) {
      var o = document.createElement("option");
      o.value = v;
      o.textContent = v;
      select.appendChild(o);
    });
    select.value = values.indexOf(chosen) >= 0 ? chosen : values[0];
  }

  function sidesOf(base) {
    return (catalog.get(base) || []).map(function (s) { return s.side; });
  }

  function selection() {
    var base = $("instrument").value;
    var side = $("price").value;
    var entry = (catalog.get(base) || []).find(function (s) { return s.side === side; });
    return { base: base, side: side, name: entry ? entry.name : base, timeframe: $("timeframe").value };
  }

  function remember(sel) {
    var q = new URLSearchParams();
    if (token) q.set("token", token);
    q.set("instrument", sel.base);
    q.set("price", sel.side);
    q.set("timeframe", sel.timeframe);
    history.replaceState(null, "", location.pathname + "?" + q.toString());
  }

  function load() {
    var sel = selection();
    if (!sel.base) return;
    remember(sel);
    var gen = ++generation;
    if (sub && sub.name) send({ op: "unsubscribe", instrument: sub.name, timeframe: sub.timeframe });
    sub = { instrument: sel.name, name: null, timeframe: sel.timeframe, generation: gen };
    bars.clear();
    switchTimes.clear();
    pending = [];
    page.ready = false;
    page.updates = 0;
    page.instrument = sel.name;
    page.timeframe = sel.timeframe;
    page.price = sel.side;
    problem("");
    // Subscribe first and hold the live messages: nothing published while the history is in flight is lost.
    send({ op: "subscribe", instrument: sel.name, timeframe: sel.timeframe, snapshot: 3 });
    var path = "/candles/" + encodeURI(sel.base) + "/" + sel.timeframe + "?limit=" + HISTORY +
      (["mid", "bid", "ask"].indexOf(sel.side) >= 0 ? "&price=" + sel.side : "");
    var switchesWanted = logical.has(sel.base)
      ? api("/switches/" + encodeURI(sel.base)).catch(function () { return null; })
      : Promise.resolve(null);
    Promise.all([api(path), switchesWanted]).then(function (got) {
      if (gen !== generation) return;
      var r = got[0];
      if (r.status !== 200) { problem(r.body && r.body.error ? r.body.error : "GET " + path + ": " + r.status); return; }
      r.body.candles.forEach(function (row) { var b = toBar(row); bars.set(b.time, b); });
      r.body.switches.forEach(function (w) { switchTimes.set(w.open_time / 1000, w.from + " → " + w.to); });
      var sw = got[1];
      if (sw && sw.status === 200) {
        sw.body.switches.forEach(function (w) {
          var at = w.spanning[sel.timeframe];
          if (at !== undefined) switchTimes.set(at / 1000, w.from + " → " + w.to);
        });
      }
      drawAll();
      chart.timeScale().scrollToRealTime();
      page.ready = true;
      var held = pending;
      pending = [];
      mirror();
      held.forEach(applyLive);
    }).catch(failed);
  }

  var logical = new Set();

  function start() {
    api("/instruments").then(function (r) {
      if (r.status !== 200) { problem(r.body.error); return; }
      r.body.instruments.forEach(function (inst) {
        var base = inst.name.split("@")[0];
        var side = inst.price || "trade";
        if (!catalog.has(base)) catalog.set(base, []);
        catalog.get(base).push({ side: side, name: inst.name });
      });
      var bases = Array.from(catalog.keys());
      fill($("instrument"), bases, params.get("instrument"));
      fill($("price"), sidesOf($("instrument").value), params.get("price"));
      var tfs = r.body.timeframes;
      fill($("timeframe"), tfs, params.get("timeframe") || (tfs.indexOf("1m") >= 0 ? "1m" : tfs[0]));
      $("instrument").onchange = function () {
        fill($("price"), sidesOf($("instrument").value), $("price").value);
        load();
      };
      $("price").onchange = load;
      $("timeframe").onchange = load;
      return pollStatus().then(function () {
        connect();
        load();
      });
    }).catch(failed);
  }

  // --- the depth view: the instrument's order book, when the server keeps one -----------------------
  // Snapshot, then deltas that must each follow the previous message (prev); otherwise subscribe again.
  // Nothing is shown as valid while the server's book is out of sync.

  var BOOK_DEPTH = 10;
  var book = { name: null, bids: new Map(), asks: new Map(), seq: null, inSync: false };
  page.book = book;

  function followBook(name) {
    if (book.name === name) return;
    if (book.name) send({ op: "unsubscribe_book", instrument: book.name });
    book.name = name;
    book.seq = null;
    book.inSync = false;
    $("depth").hidden = !name;
    if (name) send({ op: "subscribe_book", instrument: name, depth: BOOK_DEPTH });
    drawBook();
  }

  function onBook(msg) {
    if (msg.instrument !== book.name) return;
    var d = msg.data;
    if (msg.type === "book_snapshot") {
      book.bids = new Map(d.bids);
      book.asks = new Map(d.asks);
      book.inSync = d.in_sync;
    } else if (d.prev !== book.seq) {
      send({ op: "unsubscribe_book", instrument: book.name });
      send({ op: "subscribe_book", instrument: book.name, depth: BOOK_DEPTH });
      return;
    } else {
      [[book.bids, d.bids], [book.asks, d.asks]].forEach(function (pair) {
        pair[1].forEach(function (lv) { if (lv[1]) pair[0].set(lv[0], lv[1]); else pair[0].delete(lv[0]); });
      });
    }
    book.seq = d.sequence;
    drawBook();
  }

  function drawBook() {
    var bids = Array.from(book.bids.entries()).sort(function (a, b) { return b[0] - a[0]; });
    var asks = Array.from(book.asks.entries()).sort(function (a, b) { return a[0] - b[0]; });
    var most = Math.max.apply(null, bids.concat(asks).map(function (l) { return l[1]; }).concat([0]));
    var row = function (l, side) {
      var w = most ? Math.round(100 * l[1] / most) : 0;
      return '<tr class="' + side + '"><td>' + l[0] + "</td><td>" + l[1] +
        '</td><td class="bar"><span style="width:' + w + '%"></span></td></tr>';
    };
    var valid = book.inSync && bids.length && asks.length;
    $("depth-state").textContent = !book.name ? "" : valid
      ? book.name + " · spread " + (asks[0][0] - bids[0][0]).toPrecision(6) + " · #" + book.seq
      : book.name + " · out of sync, resynchronising";
    $("depth-levels").innerHTML = valid
      ? asks.slice().reverse().map(function (l) { return row(l, "ask"); }).join("") +
        bids.map(function (l) { return row(l, "bid"); }).join("")
      : "";
    $("depth").dataset.inSync = String(!!valid);
    $("depth").dataset.sequence = String(book.seq);
  }

  // --- the status strip ---------------------------------------------------------------------------

  function pollStatus() {
    return Promise.all([api("/streaming/status"), api("/health")]).then(function (got) {
      var st = got[0].body;
      var health = got[1].body;
      Object.keys(st.failover || {}).forEach(function (name) { logical.add(name); });
      var base = selection().base;
      followBook(base && (st.books || {})[base] ? base : null);
      var venues = Object.keys(st.venues || {}).map(function (v) {
        return (st.venues[v].connected ? "● " : "○ ") + v;
      });
      var connected = Object.keys(st.venues || {}).filter(function (v) { return st.venues[v].connected; });
      var ve = $("st-venues");
      ve.textContent = "venues: " + (venues.join("  ") || "none");
      ve.className = "pill " + (connected.length === venues.length && venues.length ? "ok" : "bad");
      var rate = 0;
      var mine = null;
      Object.keys(st.instruments || {}).forEach(function (name) {
        rate += st.instruments[name].messages_per_s;
        if (sub && name === sub.name) mine = st.instruments[name].messages_per_s;
      });
      $("st-rate").textContent = "messages/s: " + rate.toFixed(1) + (mine === null ? "" : " (this series " + mine.toFixed(1) + ")");
      var he = $("st-health");
      he.textContent = health.status === "ok" ? "health: ok" : "health: " + health.status + " — " + (health.reasons || []).join("; ");
      he.className = "pill " + (health.status === "ok" ? "ok" : "bad");
      $("chart-state").dataset.health = health.status;
      $("chart-state").dataset.venues = connected.join(",");
    }).catch(failed);
  }

  if (token) {
    var q = "?token=" + encodeURIComponent(token);
    $("docs-link").href = "/docs" + q;
    $("ws-docs-link").href = "/docs/websocket" + q;
  }
  mirror();
  start();
  setInterval(function () { if (page.error !== "token") pollStatus(); }, 2000);
})();
