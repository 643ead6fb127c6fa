// gpuwarden dashboard: polls the coordinator's read API and redraws each panel in place.
//
// Node names, reasons and finding messages come from agents, so nothing here ever parses a
// string as HTML: every piece of text goes in through textContent or an attribute.
"use strict";

(() => {
  const POLL_MS = 2000;
  const REQUEST_TIMEOUT_MS = 5000;
  const HISTORY_S = 600;
  // a hole in the samples longer than this is drawn as a gap, not a straight line across it
  const GAP_S = (3 * POLL_MS) / 1000;
  const AUDIT_LIMIT = 20;
  const HEALTH_CLASSES = new Set(["healthy", "degraded", "unhealthy", "unknown"]);
  const SEVERITY_CLASSES = { ok: "healthy", warning: "degraded", critical: "unhealthy" };

  const state = {
    selected: nodeFromHash(),
    samples: [], // {t: server seconds, v: percent or null}
    usage: null, // the latest usage summary (GET /api/v1/usage/summary)
    lastSuccess: null, // Date of the last poll in which every request answered
    failingSince: null,
    serverNow: null, // the coordinator's clock at the last cluster answer: ages use it, not ours
    terms: {}, // what each number means, by API field: the cluster answer's definitions
  };

  const $ = (id) => {
    const found = document.getElementById(id);
    if (found === null) throw new Error(`dashboard markup lacks #${id}`);
    return found;
  };

  // --- formatting ---------------------------------------------------------------------------

  function text(value) {
    return value === null || value === undefined || value === "" ? "–" : String(value);
  }

  function percent(value) {
    return typeof value === "number" ? `${value.toFixed(1)}%` : "–";
  }

  function duration(seconds) {
    if (typeof seconds !== "number" || !Number.isFinite(seconds)) return "–";
    let s = Math.max(0, Math.round(seconds));
    const parts = [];
    const units = [
      ["d", 86400],
      ["h", 3600],
      ["m", 60],
      ["s", 1],
    ];
    for (const [suffix, size] of units) {
      if (s >= size || (suffix === "s" && parts.length === 0)) {
        parts.push(`${Math.floor(s / size)}${suffix}`);
        s %= size;
      }
      // two units are enough to read at a glance: "1h 15m", not "1h 15m 3s"
      if (parts.length === 2) break;
    }
    // "25m 0s" reads worse than "25m"
    return parts.filter((p, i) => i === 0 || !/^0\D$/.test(p)).join(" ");
  }

  function pad(n) {
    return String(n).padStart(2, "0");
  }

  function clock(unixSeconds) {
    if (typeof unixSeconds !== "number") return "–";
    const d = new Date(unixSeconds * 1000);
    return (
      `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ` +
      `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`
    );
  }

  function age(unixSeconds) {
    if (typeof unixSeconds !== "number") return "never";
    const now = state.serverNow ?? Date.now() / 1000;
    return `${duration(now - unixSeconds)} ago`;
  }

  function gib(bytes) {
    return typeof bytes === "number" ? (bytes / 2 ** 30).toFixed(1) : "–";
  }

  // --- DOM building (text only) -------------------------------------------------------------

  // A cell is a plain value, or {text, health, title, num, muted}.
  function paint(td, spec) {
    const s = spec !== null && typeof spec === "object" ? spec : { text: spec };
    const value = text(s.text);
    const classes = [];
    if (s.num) classes.push("num");
    if (s.muted) classes.push("muted");
    if (s.health && HEALTH_CLASSES.has(s.health)) classes.push(`health-${s.health}`);
    const className = classes.join(" ");
    // only what changed is touched, so a poll keeps the operator's text selection and focus
    if (td.textContent !== value) td.textContent = value;
    if (td.className !== className) td.className = className;
    if (s.title) td.title = String(s.title);
    else td.removeAttribute("title");
  }

  function fillTable(tableId, rows, toCells, decorate) {
    const tbody = $(tableId).tBodies[0];
    while (tbody.rows.length > rows.length) tbody.deleteRow(-1);
    rows.forEach((row, i) => {
      const tr = tbody.rows[i] || tbody.insertRow();
      const specs = toCells(row);
      while (tr.cells.length > specs.length) tr.deleteCell(-1);
      specs.forEach((spec, j) => paint(tr.cells[j] || tr.insertCell(), spec));
      if (decorate) decorate(tr, row);
    });
  }

  function show(id, visible) {
    $(id).hidden = !visible;
  }

  function setText(id, value) {
    $(id).textContent = text(value);
  }

  // Labels and tooltips of every [data-term] element, from the API's definitions: the words
  // live once, in coordinator/definitions.py.
  function applyTerms(definitions) {
    state.terms = definitions;
    for (const element of document.querySelectorAll("[data-term]")) {
      const term = definitions[element.dataset.term];
      if (!term) continue;
      if (element.textContent !== term.label) element.textContent = term.label;
      element.title = term.definition;
    }
  }

  function setBadge(id, label, tone) {
    const badge = $(id);
    badge.textContent = label;
    badge.className = `badge${tone ? ` badge-${tone}` : ""}`;
    badge.hidden = false;
  }

  // --- panels -------------------------------------------------------------------------------

  function renderCluster(c) {
    state.serverNow = typeof c.ts === "number" ? c.ts : Date.now() / 1000;
    applyTerms(c.definitions || {});
    setText("cluster-name", c.cluster);
    document.title = `gpuwarden · ${text(c.cluster)}`;
    if (c.leader) setBadge("badge-leader", "leader", "");
    else setBadge("badge-leader", "standby: not acting", "warn");
    show("badge-dry-run", Boolean(c.dry_run));
    const ingest = c.ingest || {};
    if (ingest.connected === false) setBadge("badge-broker", "broker disconnected", "alert");
    else setBadge("badge-broker", `broker ok · ${text(ingest.accepted_per_s)} msg/s`, "");

    show("paused-banner", Boolean(c.remediation_paused));
    setText("paused-reason", c.remediation_paused ? c.paused_reason || "no reason given" : "");

    const cap = c.capacity || {};
    setText("stat-nodes", c.nodes_total);
    setText("stat-gpus-total", cap.gpus_total);
    setText("stat-gpus-healthy", cap.gpus_healthy);
    setText("stat-gpus-unhealthy", cap.gpus_unhealthy);
    setText("stat-gpus-pending", cap.gpus_pending_recovery);
    $("stat-gpus-unhealthy").classList.toggle("health-unhealthy", cap.gpus_unhealthy > 0);
    $("stat-gpus-pending").classList.toggle("health-degraded", cap.gpus_pending_recovery > 0);
    $("stat-utilization").textContent = percent(c.utilization_pct);

    const lifecycles = Object.entries(c.nodes_by_lifecycle || {}).filter(([, n]) => n > 0);
    $("lifecycle-counts").textContent = lifecycles.length
      ? `Instances by lifecycle: ${lifecycles.map(([k, n]) => `${k} ${n}`).join(" · ")}`
      : "";

    const types = Object.entries(c.by_instance_type || {});
    fillTable("instance-types", types, ([name, t]) => [
      name || "(unknown)",
      { text: t.nodes, num: true },
      { text: t.gpus_total, num: true },
      { text: t.gpus_healthy, num: true },
      { text: t.gpus_unhealthy, num: true, health: t.gpus_unhealthy > 0 ? "unhealthy" : "" },
      { text: t.gpus_pending_recovery, num: true },
    ]);
    show("instance-types", types.length > 0);

    recordSample(state.serverNow, c.utilization_pct);
    drawChart();
  }

  function renderNodes(nodes) {
    setText("nodes-count", `(${nodes.length})`);
    setText("stat-in-service", nodes.filter((n) => n.schedulable).length);
    show("nodes-empty", nodes.length === 0);
    fillTable(
      "nodes-table",
      nodes,
      (n) => [
        n.name,
        n.lifecycle,
        { text: n.health, health: n.health },
        { text: n.action, muted: n.action === "none" },
        { text: `${n.gpus_healthy}/${n.gpus_total}`, num: true },
        n.instance_type,
        { text: n.agent, health: n.agent === "offline" ? "unknown" : "" },
        { text: age(n.last_seen), title: clock(n.last_seen) },
        n.reason,
      ],
      (tr, n) => {
        tr.dataset.node = n.name;
        tr.tabIndex = 0;
        const selected = n.name === state.selected;
        tr.classList.toggle("selected", selected);
        tr.setAttribute("aria-selected", String(selected));
      },
    );
  }

  function fact(label, value, health) {
    const wrap = document.createElement("div");
    const dt = document.createElement("dt");
    const dd = document.createElement("dd");
    dt.textContent = label;
    dd.textContent = text(value);
    if (health) dd.classList.add(`health-${healthClass(health)}`);
    wrap.append(dt, dd);
    return wrap;
  }

  function renderDetail(name, node) {
    show("node-detail", true);
    setText("detail-name", name);
    show("detail-missing", node === null);
    show("detail-body", node !== null);
    if (node === null) {
      $("detail-missing").textContent =
        "The coordinator no longer knows this node (removed, or the name changed).";
      return;
    }
    $("detail-facts").replaceChildren(
      fact("Lifecycle", `${node.lifecycle} since ${clock(node.since)}`),
      fact("Health", node.health, node.health),
      fact("Pending action", node.action),
      fact("Schedulable", node.schedulable ? "yes" : "no"),
      fact("Operator hold", node.hold ? "yes" : "no"),
      fact("Agent", `${node.agent}, last seen ${age(node.last_seen)}`),
      fact("Instance type", node.instance_type),
      fact("Driver", node.driver_version),
      fact("Boot id", node.boot_id),
      fact("Reason", node.reason),
    );

    fillTable("detail-gpus", node.gpus || [], (g) => [
      { text: g.index, num: true },
      g.uuid,
      { text: g.lost ? `${g.health} (lost)` : g.health, health: g.health },
      { text: g.action, muted: g.action === "none" },
      { text: percent(g.utilization_pct), num: true },
      {
        text:
          typeof g.memory_total_bytes === "number"
            ? `${gib(g.memory_used_bytes)} / ${gib(g.memory_total_bytes)} GiB`
            : null,
        num: true,
      },
      { text: g.processes, num: true },
    ]);

    const findings = node.findings || [];
    fillTable("detail-findings", findings, (f) => [
      { text: f.gpu_index ?? "host", num: true },
      f.code,
      { text: f.unknown ? `${f.severity} (unknown)` : f.severity, health: severityClass(f) },
      { text: f.action, muted: f.action === "none" },
      { text: clock(f.first_seen), title: age(f.first_seen) },
      { text: f.count, num: true },
      f.message,
      f.check,
    ]);
    show("detail-findings", findings.length > 0);
    show("detail-no-findings", findings.length === 0);

    const ev = node.last_event;
    $("detail-last-event").textContent = ev
      ? `Last fault event: ${ev.code} (${ev.severity}, action ${ev.action})` +
        `${typeof ev.gpu_index === "number" ? ` on GPU ${ev.gpu_index}` : " on the host"}` +
        ` at ${clock(ev.at)}`
      : "No fault event recorded.";

    const history = node.history || [];
    fillTable("detail-history", history, (h) => [
      clock(h.ts),
      h.dry_run ? `${h.event} (dry-run)` : h.event,
      h.actor,
      h.reason,
    ]);
    show("detail-history", history.length > 0);
    show("detail-no-history", history.length === 0);
  }

  function healthClass(health) {
    return HEALTH_CLASSES.has(health) ? health : "unknown";
  }

  function severityClass(finding) {
    return finding.unknown ? "unknown" : SEVERITY_CLASSES[finding.severity] || "unknown";
  }

  function renderTeams(teams, unassigned) {
    show("teams-table", teams.length > 0);
    show("teams-off", teams.length === 0);
    const rows = teams.map((t) => [
      t.name,
      t.namespace,
      { text: t.quota, num: true },
      { text: t.guarantee, num: true },
      { text: t.allocated, num: true },
      { text: t.in_use, num: true },
      { text: t.borrowed, num: true },
      { text: t.lent, num: true },
      { text: percent(t.utilization_pct), num: true },
    ]);
    // capacity outside every quota lends too: with it, Lent sums to Borrowed
    const balanced = unassigned && teams.length > 0;
    if (balanced) {
      const none = { text: null, num: true };
      rows.push([
        { text: "(unassigned)", muted: true, title: (state.terms.unassigned || {}).definition },
        null,
        none,
        { text: unassigned.gpus, num: true },
        { text: unassigned.used, num: true },
        none,
        none,
        { text: unassigned.used, num: true },
        none,
      ]);
    }
    fillTable("teams-table", rows, (cells) => cells);
    show("teams-balance", Boolean(balanced));
    if (balanced) {
      const sum = (key) => teams.reduce((total, t) => total + (t[key] || 0), 0);
      $("teams-balance").textContent =
        `Borrowed ${sum("borrowed")} = lent by teams ${sum("lent")} + ` +
        `unassigned in use ${unassigned.used}`;
    }
  }

  function renderClasses(classes) {
    show("classes-table", classes.length > 0);
    show("classes-off", classes.length === 0);
    fillTable("classes-table", classes, (p) => [
      p.name || "(none)",
      { text: p.weight, num: true },
      { text: p.running, num: true },
      { text: p.pending, num: true },
      { text: p.preempted, num: true },
      { text: duration(p.avg_run_s), num: true },
      { text: duration(p.avg_wait_s), num: true },
      { text: duration(p.longest_run_s), num: true },
      { text: duration(p.longest_wait_s), num: true },
    ]);
  }

  function renderAudit(entries) {
    show("audit-table", entries.length > 0);
    show("audit-empty", entries.length === 0);
    fillTable("audit-table", entries, (e) => [
      { text: clock(e.ts), title: `#${e.id}` },
      e.kind,
      e.actor,
      e.node,
      e.task,
      e.team,
      e.action,
      { text: e.dry_run ? `${text(e.outcome)} (dry-run)` : e.outcome },
      e.reason,
    ]);
  }

  // --- utilization chart --------------------------------------------------------------------

  function recordSample(t, v) {
    const last = state.samples[state.samples.length - 1];
    // the coordinator's clock did not move: the same sample again, not a new one
    if (last && last.t >= t) return;
    state.samples.push({ t, v: typeof v === "number" ? v : null });
    while (state.samples.length && state.samples[0].t < t - HISTORY_S) state.samples.shift();
  }

  function drawChart() {
    const canvas = $("util-chart");
    const ratio = window.devicePixelRatio || 1;
    const width = canvas.clientWidth;
    const height = canvas.clientHeight;
    if (width === 0 || height === 0) return;
    canvas.width = Math.round(width * ratio);
    canvas.height = Math.round(height * ratio);
    const ctx = canvas.getContext("2d");
    ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
    ctx.clearRect(0, 0, width, height);

    const style = getComputedStyle(canvas);
    const ink = style.getPropertyValue("--chart-ink").trim() || "#1f4e79";
    const grid = style.getPropertyValue("--chart-grid").trim() || "#ddd";
    const label = style.getPropertyValue("--chart-label").trim() || "#666";
    const left = 36;
    const right = width - 8;
    const top = 8;
    const bottom = height - 18;
    const now = state.serverNow ?? Date.now() / 1000;
    const x = (t) => left + ((t - (now - HISTORY_S)) / HISTORY_S) * (right - left);
    const y = (v) => bottom - (v / 100) * (bottom - top);

    ctx.font = "11px system-ui, sans-serif";
    ctx.lineWidth = 1;
    ctx.strokeStyle = grid;
    ctx.fillStyle = label;
    ctx.textAlign = "right";
    ctx.textBaseline = "middle";
    for (const v of [0, 25, 50, 75, 100]) {
      ctx.beginPath();
      ctx.moveTo(left, Math.round(y(v)) + 0.5);
      ctx.lineTo(right, Math.round(y(v)) + 0.5);
      ctx.stroke();
      ctx.fillText(`${v}%`, left - 4, y(v));
    }
    ctx.textBaseline = "top";
    for (const [offset, name] of [
      [HISTORY_S, "-10m"],
      [HISTORY_S / 2, "-5m"],
      [0, "now"],
    ]) {
      ctx.textAlign = offset === HISTORY_S ? "left" : offset === 0 ? "right" : "center";
      ctx.fillText(name, x(now - offset), bottom + 4);
    }

    ctx.strokeStyle = ink;
    ctx.lineWidth = 1.5;
    ctx.beginPath();
    let previous = null;
    for (const s of state.samples) {
      if (s.v === null) {
        previous = null;
        continue;
      }
      if (previous === null || s.t - previous.t > GAP_S) ctx.moveTo(x(s.t), y(s.v));
      else ctx.lineTo(x(s.t), y(s.v));
      previous = s;
    }
    ctx.stroke();
    // a lone sample draws no line: mark every point so the first ones show
    ctx.fillStyle = ink;
    for (const s of state.samples) {
      if (s.v !== null) ctx.fillRect(x(s.t) - 1.5, y(s.v) - 1.5, 3, 3);
    }

    const known = state.samples.filter((s) => s.v !== null);
    canvas.dataset.samples = String(state.samples.length);
    const span = state.samples.length ? now - state.samples[0].t : 0;
    canvas.setAttribute(
      "aria-label",
      known.length
        ? `GPU utilization: latest ${percent(known[known.length - 1].v)}, ` +
            (span > 0
              ? `${known.length} samples over the last ${duration(span)}`
              : `${known.length} sample`)
        : "GPU utilization: no samples yet",
    );
  }

  // --- usage: GPU-hours per team over the chosen range ------------------------------------

  const USAGE_EVERY_MS = 60000; // the ledger writes every 15 s; a day's bars move slowly
  const TEAM_COLOURS = ["#1f4e79", "#c0504d", "#9bbb59", "#8064a2", "#f79646", "#4bacc6"];

  function usageRange() {
    const days = Number($("usage-range").value) || 7;
    const today = new Date((state.serverNow ?? Date.now() / 1000) * 1000);
    const iso = (d) => d.toISOString().slice(0, 10);
    const from = new Date(today.getTime() - (days - 1) * 86400000);
    return { from: iso(from), to: iso(today) };
  }

  async function refreshUsage() {
    const range = usageRange();
    const query = `from=${range.from}&to=${range.to}`;
    $("usage-export").href = `/api/v1/usage/summary?${query}&format=csv`;
    let report;
    try {
      report = await getJson(`/api/v1/usage/summary?${query}`);
    } catch (error) {
      if (error.status === 404) {
        show("usage", false); // this coordinator keeps no ledger
        return;
      }
      throw error;
    }
    show("usage", true);
    state.usage = report;
    drawUsage();
    const missing = report.missing || [];
    $("usage-missing").textContent = missing.length
      ? `Missing data: ${missing
          .map((p) => `${p.kind === "node" ? p.subject : "coordinator"} ${clock(p.start)} to ` +
            `${clock(p.end)}`)
          .join("; ")}`
      : "No missing data in this range.";
  }

  function drawUsage() {
    const report = state.usage;
    const canvas = $("usage-chart");
    if (!report) return;
    const byDay = new Map();
    const teams = [];
    for (const row of report.rows || []) {
      if (!teams.includes(row.team)) teams.push(row.team);
      const day = byDay.get(row.date) || {};
      day[row.team] = (day[row.team] || 0) + row.allocated_gpu_h;
      byDay.set(row.date, day);
    }
    teams.sort();
    const days = [...byDay.keys()].sort();
    canvas.dataset.days = String(days.length);
    canvas.dataset.teams = teams.join(",");
    const totals = days.map((d) => teams.reduce((sum, t) => sum + (byDay.get(d)[t] || 0), 0));
    canvas.dataset.totals = totals.map((v) => v.toFixed(1)).join(",");
    const legend = $("usage-legend");
    legend.replaceChildren();
    teams.forEach((team, i) => {
      const swatch = document.createElement("span");
      swatch.className = "swatch";
      swatch.style.background = TEAM_COLOURS[i % TEAM_COLOURS.length];
      const name = document.createElement("span");
      name.textContent = team;
      legend.append(swatch, name);
    });
    const ratio = window.devicePixelRatio || 1;
    const width = canvas.clientWidth;
    const height = canvas.clientHeight;
    if (width === 0 || height === 0) return;
    canvas.width = Math.round(width * ratio);
    canvas.height = Math.round(height * ratio);
    const ctx = canvas.getContext("2d");
    ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
    ctx.clearRect(0, 0, width, height);
    const top = Math.max(1, ...totals);
    const left = 44;
    const bottom = height - 18;
    const slot = (width - left) / Math.max(1, days.length);
    const style = getComputedStyle(canvas);
    ctx.font = "11px system-ui, sans-serif";
    ctx.fillStyle = style.getPropertyValue("--chart-label").trim() || "#666";
    ctx.textAlign = "right";
    ctx.fillText(`${Math.round(top)} GPU-h`, left - 4, 10);
    days.forEach((day, i) => {
      let y = bottom;
      teams.forEach((team, k) => {
        const h = ((byDay.get(day)[team] || 0) / top) * (bottom - 10);
        ctx.fillStyle = TEAM_COLOURS[k % TEAM_COLOURS.length];
        ctx.fillRect(left + i * slot + 1, y - h, Math.max(1, slot - 2), h);
        y -= h;
      });
    });
    canvas.setAttribute(
      "aria-label",
      `GPU-hours per team over ${days.length} days: ${teams.length} teams, ` +
        `${totals.reduce((a, b) => a + b, 0).toFixed(1)} GPU-hours allocated`,
    );
  }

  async function usageLoop() {
    try {
      await refreshUsage();
    } catch (error) {
      reportFreshness([`usage: ${error && error.message}`]);
    } finally {
      setTimeout(usageLoop, USAGE_EVERY_MS);
    }
  }

  // --- polling ------------------------------------------------------------------------------

  async function getJson(path) {
    const abort = new AbortController();
    const timer = setTimeout(() => abort.abort(), REQUEST_TIMEOUT_MS);
    try {
      const response = await fetch(path, { signal: abort.signal, cache: "no-store" });
      if (!response.ok) {
        const error = new Error(`${path}: HTTP ${response.status}`);
        error.status = response.status;
        throw error;
      }
      return await response.json();
    } finally {
      clearTimeout(timer);
    }
  }

  const PANELS = [
    ["/api/v1/cluster", (body) => renderCluster(body)],
    ["/api/v1/nodes", (body) => renderNodes(body.nodes || [])],
    ["/api/v1/teams", (body) => renderTeams(body.teams || [], body.unassigned || null)],
    ["/api/v1/priority-classes", (body) => renderClasses(body.priorityClasses || [])],
    [`/api/v1/audit?limit=${AUDIT_LIMIT}`, (body) => renderAudit(body.entries || [])],
  ];

  async function refreshDetail() {
    const name = state.selected;
    if (name === null) {
      show("node-detail", false);
      return;
    }
    try {
      const node = await getJson(`/api/v1/nodes/${encodeURIComponent(name)}`);
      if (state.selected === name) renderDetail(name, node);
    } catch (error) {
      if (error.status !== 404) throw error;
      if (state.selected === name) renderDetail(name, null);
    }
  }

  async function poll() {
    const answers = await Promise.allSettled(PANELS.map(([path]) => getJson(path)));
    const failures = [];
    // rendered in PANELS order, cluster first: node ages are measured against its clock
    answers.forEach((answer, i) => {
      if (answer.status === "fulfilled") PANELS[i][1](answer.value);
      else failures.push(String(answer.reason && answer.reason.message));
    });
    if (answers.some((answer) => answer.status === "fulfilled")) showContent();
    try {
      await refreshDetail();
    } catch (error) {
      failures.push(String(error && error.message));
    }
    reportFreshness(failures);
  }

  // Until the coordinator first answers, the page says it is loading instead of showing a
  // dash in every field.
  function showContent() {
    show("content", true);
    show("loading", false);
  }

  function reportFreshness(failures) {
    const now = new Date();
    if (failures.length === 0) {
      state.lastSuccess = now;
      state.failingSince = null;
      show("api-error", false);
      $("freshness").textContent = `updated ${clock(now.getTime() / 1000).slice(11)}`;
      return;
    }
    state.failingSince = state.failingSince ?? now;
    const since = clock(state.failingSince.getTime() / 1000).slice(11);
    const shown = state.lastSuccess ? clock(state.lastSuccess.getTime() / 1000).slice(11) : "never";
    $("api-error").textContent =
      `The coordinator is not answering fully since ${since} ` +
      `(last complete update ${shown}): ${failures.join("; ")}`;
    show("api-error", true);
    $("freshness").textContent = "stale";
  }

  async function loop() {
    try {
      await poll();
    } catch (error) {
      // a bug in a render must not stop the polling: show it and keep going
      reportFreshness([`dashboard error: ${error && error.message}`]);
    } finally {
      setTimeout(loop, POLL_MS);
    }
  }

  // --- selection ----------------------------------------------------------------------------

  function nodeFromHash() {
    const match = /^#node=(.+)$/.exec(window.location.hash);
    if (!match) return null;
    try {
      return decodeURIComponent(match[1]);
    } catch {
      return null;
    }
  }

  function select(name) {
    state.selected = name;
    const hash = name === null ? "" : `#node=${encodeURIComponent(name)}`;
    // replaceState: clicking through nodes must not fill the back button's history
    history.replaceState(null, "", `${window.location.pathname}${window.location.search}${hash}`);
    for (const tr of $("nodes-table").tBodies[0].rows) {
      const selected = tr.dataset.node === name;
      tr.classList.toggle("selected", selected);
      tr.setAttribute("aria-selected", String(selected));
    }
    refreshDetail().catch((error) => reportFreshness([String(error && error.message)]));
  }

  function rowNode(event) {
    const tr = event.target.closest("tr[data-node]");
    return tr === null ? null : tr.dataset.node;
  }

  function wire() {
    const body = $("nodes-table").tBodies[0];
    body.addEventListener("click", (event) => {
      const name = rowNode(event);
      if (name !== null) select(name);
    });
    body.addEventListener("keydown", (event) => {
      if (event.key !== "Enter" && event.key !== " ") return;
      const name = rowNode(event);
      if (name === null) return;
      event.preventDefault();
      select(name);
    });
    $("detail-close").addEventListener("click", () => select(null));
    window.addEventListener("resize", () => {
      drawChart();
      drawUsage();
    });
    $("usage-range").addEventListener("change", () => {
      refreshUsage().catch((error) => reportFreshness([String(error && error.message)]));
    });
    loop();
    usageLoop();
  }

  wire();
})();
