// The Switchyard dashboard. Plain script, no dependencies. Every figure comes from an API route
// (/v1/me, /v1/usage, /v1/keys, /admin/...) answered with the session cookie; changes carry the
// session's CSRF token in X-CSRF-Token. Text always goes in as text nodes, never as HTML.
'use strict';

(() => {
  const S = { csrf: null, session: null, timers: [], profiles: [], usage: {} };
  const $ = (id) => document.getElementById(id);
  const SVG = 'http://www.w3.org/2000/svg';

  // --- DOM helpers: attributes and text only --------------------------------------------------

  function h(tag, attrs, ...kids) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === undefined || v === null || v === false) continue;
      if (k === 'onclick') e.addEventListener('click', v);
      else if (k === 'class') e.className = v;
      else e.setAttribute(k, v === true ? '' : String(v));
    }
    for (const k of kids) {
      if (k === undefined || k === null) continue;
      e.append(k instanceof Node ? k : document.createTextNode(String(k)));
    }
    return e;
  }

  function s(tag, attrs, text) {
    const e = document.createElementNS(SVG, tag);
    for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, String(v));
    if (text !== undefined) e.textContent = String(text);
    return e;
  }

  function notice(text, isError) {
    const n = $('notice');
    n.textContent = text || '';
    n.className = isError ? 'error' : '';
    n.hidden = !text;
  }

  const show = (v) => (v === null || v === undefined || v === '' ? '—' : String(v));

  // --- the API ---------------------------------------------------------------------------------

  async function api(method, path, body) {
    const opts = { method, credentials: 'same-origin', headers: {} };
    if (method !== 'GET') opts.headers['X-CSRF-Token'] = S.csrf || '';
    if (body !== undefined) {
      opts.headers['Content-Type'] = 'application/json';
      opts.body = JSON.stringify(body);
    }
    const res = await fetch(path, opts);
    let data = null;
    try { data = await res.json(); } catch (_) { data = null; }
    if (!res.ok) {
      const msg = (data && data.error && data.error.message) || ('HTTP ' + res.status);
      if (res.status === 401 && S.session && !path.startsWith('/ui/api/')) signedOut(msg);
      const err = new Error(msg);
      err.status = res.status;
      throw err;
    }
    return { data, headers: res.headers };
  }

  // Runs `fn` now and every `ms` while signed in; a failure shows in the notice line.
  function every(ms, fn) {
    const run = () => fn().catch((e) => { if (S.session) notice(e.message, true); });
    run();
    S.timers.push(setInterval(run, ms));
  }

  function act(fn) {
    return (ev) => {
      if (ev) ev.preventDefault();
      notice('');
      fn(ev).catch((e) => notice(e.message, true));
    };
  }

  // --- sign-in ---------------------------------------------------------------------------------

  function signedOut(message) {
    S.timers.forEach(clearInterval);
    S.timers = [];
    S.session = null;
    S.csrf = null;
    $('user').hidden = true;
    $('admin').hidden = true;
    $('signout').hidden = true;
    $('who').textContent = '';
    $('signin').hidden = false;
    $('signin-error').textContent = message || '';
  }

  async function start() {
    let session;
    try {
      session = (await api('GET', '/ui/api/session')).data;
    } catch (_) {
      signedOut('');
      return;
    }
    S.session = session;
    S.csrf = session.csrf_token;
    $('signin').hidden = true;
    $('signout').hidden = false;
    $('who').textContent = session.credential === 'admin_token'
      ? 'operator (admin token)'
      : (session.account || '') + ' · ' + session.role;
    if (session.admin) startAdmin(); else startUser();
  }

  function formData(form) {
    const out = {};
    for (const [k, v] of new FormData(form).entries()) out[k] = String(v).trim();
    return out;
  }

  async function signIn(body) {
    try {
      const r = await api('POST', '/ui/api/login', body);
      S.csrf = r.data.csrf_token;
      await start();
    } catch (e) {
      $('signin-error').textContent = e.message;
    }
  }

  // --- tables and charts -----------------------------------------------------------------------

  // Fills a table: `cols` are [key, heading, render?]; `rowKey` names the row (data-row).
  function table(el, cols, rows, rowKey) {
    el.tHead.replaceChildren(h('tr', null, ...cols.map((c) => h('th', null, c[1]))));
    const body = el.tBodies[0];
    if (!rows.length) {
      body.replaceChildren(h('tr', null, h('td', { colspan: cols.length, class: 'empty' }, 'Nothing yet.')));
      return;
    }
    body.replaceChildren(...rows.map((r) => h('tr', { 'data-row': rowKey ? r[rowKey] : null },
      ...cols.map((c) => {
        const v = c[2] ? c[2](r) : show(r[c[0]]);
        return h('td', { 'data-col': c[0] }, v);
      }))));
  }

  // The usage columns, plus any other token counts the API reports (cache tokens, for example).
  function usageCols(group, rows) {
    const base = ['requests', 'attempts', 'prompt_tokens', 'completion_tokens'];
    const extra = new Set();
    for (const r of rows) {
      for (const k of Object.keys(r)) {
        if (k.endsWith('_tokens') && !base.includes(k) && k !== 'total_tokens') extra.add(k);
      }
    }
    const known = ['cached_tokens', 'cache_write_tokens', 'cache_write_1h_tokens', 'reasoning_tokens'];
    const order = (k) => (known.includes(k) ? known.indexOf(k) : known.length);
    const keys = [...base, ...[...extra].sort((a, b) => order(a) - order(b) || a.localeCompare(b)), 'total_tokens', 'cost_usd'];
    return [[group, group], ...keys.map((k) => [k, k.replace(/_/g, ' ')])];
  }

  function usageTable(el, report) {
    const cols = usageCols(report.group_by, report.data.concat([report.total]));
    table(el, cols, report.data, report.group_by);
    const total = Object.assign({}, report.total, { [report.group_by]: 'total' });
    el.tFoot.replaceChildren(h('tr', { 'data-row': 'total' },
      ...cols.map((c) => h('td', { 'data-col': c[0] }, show(total[c[0]])))));
  }

  const num = (v) => Number(v) || 0;

  // Vertical bars, one per label; `stacks` maps a label to [[series, value], ...].
  function barChart(el, labels, stacks, metric, width) {
    const W = width || 640, H = width ? 200 : 220, pad = 36, bottom = 40;
    const series = [...new Set(labels.flatMap((l) => (stacks[l] || []).map((x) => x[0])))];
    const totals = labels.map((l) => (stacks[l] || []).reduce((a, x) => a + num(x[1]), 0));
    const max = Math.max(0, ...totals);
    const svg = s('svg', { viewBox: `0 0 ${W} ${H}`, role: 'img', 'data-metric': metric, class: 'bars' });
    svg.append(s('title', {}, metric));
    if (!labels.length || max === 0) {
      svg.append(s('text', { x: W / 2, y: H / 2, 'text-anchor': 'middle', class: 'none' }, 'No usage in this span.'));
      el.replaceChildren(svg);
      return;
    }
    const slot = (W - pad - 16) / labels.length;
    const bw = Math.max(2, Math.min(48, slot * 0.7));
    const scale = (H - bottom - 10) / max;
    svg.append(s('text', { x: 2, y: 12, class: 'axis' }, fmt(max)));
    svg.append(s('line', { x1: pad, y1: H - bottom, x2: W, y2: H - bottom, class: 'axis' }));
    labels.forEach((label, i) => {
      const x = pad + i * slot + (slot - bw) / 2;
      let y = H - bottom;
      const g = s('g', { 'data-label': label, 'data-value': fmt(totals[i]) });
      for (const [name, value] of stacks[label] || []) {
        const bh = num(value) * scale;
        y -= bh;
        const r = s('rect', { x, y, width: bw, height: Math.max(bh, 0), class: 'c' + (series.indexOf(name) % 8), 'data-series': name, 'data-value': value });
        r.append(s('title', {}, `${label} · ${name}: ${value}`));
        g.append(r);
      }
      // With many bars, every other label (and no zero values) keeps the axis readable.
      const every = Math.ceil(labels.length / 10);
      if ((labels.length - 1 - i) % every === 0) {
        g.append(s('text', { x: x + bw / 2, y: H - bottom + 14, 'text-anchor': 'middle', class: 'label' }, short(label)));
      }
      if (totals[i] !== 0 || labels.length <= 12) {
        g.append(s('text', { x: x + bw / 2, y: y - 3, 'text-anchor': 'middle', class: 'value' }, fmt(totals[i])));
      }
      svg.append(g);
    });
    el.replaceChildren(svg);
    if (series.some((x) => x !== metric)) {
      el.append(h('p', { class: 'legend' }, ...series.map((name, i) => h('span', { class: 'key c' + (i % 8) }, name))));
    }
  }

  const dayString = (d) => d.toISOString().slice(0, 10);

  // The last `n` UTC days, oldest first, as YYYY-MM-DD (the usage report's day keys).
  function lastDays(n) {
    const t = new Date();
    const out = [];
    for (let i = n - 1; i >= 0; i--) {
      out.push(dayString(new Date(Date.UTC(t.getUTCFullYear(), t.getUTCMonth(), t.getUTCDate() - i))));
    }
    return out;
  }

  const fmt = (v) => (Number.isInteger(v) ? String(v) : String(Number(v.toFixed(6))));
  // Days as MM-DD (the year is in the bar's tooltip), long names cut.
  const short = (label) => (/^\d{4}-\d\d-\d\d$/.test(label) ? label.slice(5)
    : label.length > 14 ? label.slice(0, 13) + '…' : label);

  // --- the user's view -------------------------------------------------------------------------

  function startUser() {
    $('user').hidden = false;
    const developer = S.session.role !== 'user';
    $('user-key-form').hidden = !developer;
    every(5000, loadMe);
    every(5000, loadOwnKeys);
    // Each /v1/usage call counts against the tier (as any /v1 call does), so it is polled slowly.
    every(300000, loadOwnUsage);
  }

  async function loadMe() {
    const r = await api('GET', '/v1/me');
    const me = r.data;
    if (me.account && me.account.email) $('who').textContent = me.account.email + ' · ' + me.role;
    const hd = (n) => r.headers.get(n);
    const facts = [['Tier', show(me.tier)]];
    if (hd('x-ratelimit-limit')) {
      facts.push(['Requests left this window', `${hd('x-ratelimit-remaining')} of ${hd('x-ratelimit-limit')} (resets in ${hd('x-ratelimit-reset')} s)`, 'requests']);
    } else {
      facts.push(['Requests per window', 'unlimited', 'requests']);
    }
    if (hd('x-ratelimit-limit-tokens')) {
      facts.push(['Tokens left today', `${hd('x-ratelimit-remaining-tokens')} of ${hd('x-ratelimit-limit-tokens')} (resets in ${hd('x-ratelimit-reset-tokens')} s)`, 'tokens']);
    } else {
      facts.push(['Tokens per day', 'unlimited', 'tokens']);
    }
    const c = me.credits;
    if (c) {
      facts.push(['Credit balance', '$' + c.balance_usd, 'balance']);
      if (c.monthly_credits_usd) facts.push(['Monthly credits', '$' + c.monthly_credits_usd, 'monthly']);
      if (c.fraction_used !== null && c.fraction_used !== undefined) {
        facts.push(['Used this month', Math.round(c.fraction_used * 1000) / 10 + '%', 'used']);
      }
      if (c.thresholds && c.thresholds.length) {
        const crossed = c.thresholds_crossed || [];
        facts.push(['Notice thresholds', c.thresholds.map((t) => Math.round(t * 100) + '%' + (crossed.includes(t) ? ' (reached)' : '')).join(', '), 'thresholds']);
      }
    }
    if (me.limits && me.limits.max_keys !== undefined) facts.push(['Live keys allowed', show(me.limits.max_keys), 'max_keys']);
    $('user-limits').replaceChildren(...facts.flatMap(([k, v, id]) => [h('dt', null, k), h('dd', { 'data-fact': id || k }, v)]));
  }

  async function loadOwnUsage() {
    const [byModel, byDay] = await Promise.all([
      api('GET', '/v1/usage?group_by=model'),
      api('GET', '/v1/usage?group_by=day'),
    ]);
    usageTable($('user-by-model'), byModel.data);
    usageTable($('user-by-day'), byDay.data);
    // Every day of the report's span, so that quiet days show as gaps; the figures are the report's.
    const days = lastDays(30);
    const stacks = {};
    for (const d of days) stacks[d] = [['total_tokens', 0]];
    for (const r of byDay.data.data) stacks[r.day] = [['total_tokens', r.total_tokens]];
    barChart($('user-chart'), days, stacks, 'total_tokens');
  }

  async function loadOwnKeys() {
    const r = await api('GET', '/v1/keys');
    const developer = S.session.role !== 'user';
    keysTable($('user-keys'), r.data.data, (k) => developer && k.status === 'active'
      ? h('button', { type: 'button', class: 'danger', onclick: act(async () => {
        await api('DELETE', '/v1/keys/' + encodeURIComponent(k.id));
        notice('Key ' + k.prefix + ' revoked.');
        await loadOwnKeys();
      }) }, 'Revoke')
      : '');
  }

  function keysTable(el, keys, actions, withAccount) {
    const cols = [['prefix', 'key'], ['name', 'name']];
    if (withAccount) cols.push(['account', 'account'], ['tier', 'tier']);
    cols.push(['status', 'status'], ['created_at', 'created'], ['expires_at', 'expires'], ['last_used_at', 'last used'],
      ['actions', '', actions]);
    table(el, cols, keys, 'id');
  }

  function showSecret(el, key, what) {
    el.replaceChildren(
      h('p', null, what + ' Copy it now: it is not shown again.'),
      h('code', { class: 'key-secret' }, key),
      h('button', { type: 'button', onclick: () => { el.hidden = true; el.replaceChildren(); } }, 'Done'));
    el.hidden = false;
  }

  $('user-refresh').addEventListener('click', act(loadOwnUsage));

  $('user-key-form').addEventListener('submit', act(async (ev) => {
    const body = formData(ev.target);
    const r = await api('POST', '/v1/keys', { name: body.name });
    showSecret($('user-secret'), r.data.key, 'Key ' + r.data.prefix + ' created.');
    ev.target.reset();
    await loadOwnKeys();
  }));

  // --- the admin's view ------------------------------------------------------------------------

  function startAdmin() {
    $('admin').hidden = false;
    every(2000, loadProfiles);
    S.timers.push(setInterval(tickCountdowns, 1000));
    // /admin/usage reads every record of its span: a slower poll than the rest.
    every(15000, loadAdminUsage);
    every(10000, loadAccounts);
    every(10000, loadAdminKeys);
    every(10000, loadAudit);
  }

  function until(t) {
    if (!t) return '';
    const left = Math.ceil((Date.parse(t) - Date.now()) / 1000);
    if (!(left > 0)) return '';
    if (left < 120) return left + ' s';
    if (left < 7200) return Math.round(left / 60) + ' min';
    return Math.round(left / 360) / 10 + ' h';
  }

  function tickCountdowns() {
    for (const td of document.querySelectorAll('#profiles td[data-until]')) {
      td.textContent = until(td.getAttribute('data-until')) || '—';
    }
  }

  async function loadProfiles() {
    const list = (await api('GET', '/admin/profiles')).data;
    S.profiles = list;
    const timer = (key) => (p) => until(p[key]) || '—';
    const cols = [
      ['id', 'profile'], ['provider', 'provider'],
      ['state', 'state', (p) => h('span', { class: 'state ' + p.state }, p.state)],
      ['cooldown_until', 'ends in', timer('cooldown_until')],
      ['billing_until', 'billing bench', timer('billing_until')],
      ['breaker_open_until', 'breaker open', timer('breaker_open_until')],
      ['auth_error', 'auth'],
      ['consecutive_failures', 'failures in a row'],
      ['requests', 'attempts'], ['failures', 'failed'],
      ['last_error', 'last error'],
      ['reset', '', (p) => h('button', { type: 'button', onclick: act(async () => {
        await api('POST', '/admin/profiles/' + encodeURIComponent(p.id) + '/reset');
        notice('Profile ' + p.id + ' reset.');
        await loadProfiles();
      }) }, 'Reset')],
    ];
    // In-flight counts show once the API reports them per profile.
    if (list.some((p) => p.in_flight !== undefined)) cols.splice(7, 0, ['in_flight', 'in flight']);
    table($('profiles'), cols, list, 'id');
    // The countdown cells tick every second between polls.
    for (const tr of $('profiles').tBodies[0].rows) {
      const p = list.find((x) => x.id === tr.getAttribute('data-row'));
      if (!p) continue;
      for (const key of ['cooldown_until', 'billing_until', 'breaker_open_until']) {
        const td = tr.querySelector(`td[data-col="${key}"]`);
        if (td && p[key]) td.setAttribute('data-until', p[key]);
      }
    }
  }

  $('reload').addEventListener('click', act(async () => {
    const r = await api('POST', '/admin/reload');
    notice('Configuration reloaded. ' + JSON.stringify(r.data));
    await loadProfiles();
  }));


  async function loadAdminUsage() {
    const metric = $('usage-metric').value;
    const dim = $('usage-dimension').value;
    const groups = ['model', 'profile', 'account'];
    const totals = await Promise.all(groups.map((g) => api('GET', '/admin/usage?group_by=' + g)));
    groups.forEach((g, i) => {
      const rows = totals[i].data.data;
      const stacks = {};
      for (const r of rows) stacks[r[g]] = [[metric, r[metric]]];
      barChart($('chart-' + g), rows.map((r) => r[g]), stacks, metric, 360);
    });
    usageTable($('admin-by-model'), totals[0].data);
    // Over time: one /admin/usage query per UTC day, grouped by the chosen dimension.
    const days = lastDays(7);
    const next = (d) => dayString(new Date(Date.parse(d + 'T00:00:00Z') + 86400000));
    const perDay = await Promise.all(days.map((d) => api('GET', `/admin/usage?group_by=${dim}&from=${d}&to=${next(d)}`)));
    const stacks = {};
    days.forEach((d, i) => { stacks[d] = perDay[i].data.data.map((r) => [r[dim], r[metric]]); });
    barChart($('chart-time'), days, stacks, metric);
  }

  $('usage-metric').addEventListener('change', act(loadAdminUsage));
  $('usage-dimension').addEventListener('change', act(loadAdminUsage));

  async function loadAccounts() {
    const list = (await api('GET', '/admin/accounts')).data.data;
    const cols = [
      ['email', 'email'], ['id', 'id'], ['role', 'role'], ['tier', 'tier'],
      ['disabled', 'status', (a) => (a.disabled ? 'disabled' : 'active')],
      ['created_at', 'created'],
      ['actions', '', (a) => {
        const tier = h('input', { name: 'tier', value: a.tier || '', size: 8, 'aria-label': 'tier of ' + a.email });
        const set = h('button', { type: 'button', onclick: act(async () => {
          await api('PATCH', '/admin/accounts/' + encodeURIComponent(a.id), { tier: tier.value.trim() });
          notice('Tier of ' + a.email + ' set.');
          await loadAccounts();
        }) }, 'Set tier');
        const toggle = h('button', { type: 'button', onclick: act(async () => {
          await api('PATCH', '/admin/accounts/' + encodeURIComponent(a.id), { disabled: !a.disabled });
          await loadAccounts();
        }) }, a.disabled ? 'Enable' : 'Disable');
        return h('span', null, tier, set, toggle);
      }],
    ];
    table($('accounts'), cols, list, 'id');
  }

  $('account-form').addEventListener('submit', act(async (ev) => {
    const b = formData(ev.target);
    const body = { email: b.email, password: b.password, role: b.role };
    if (b.tier) body.tier = b.tier;
    await api('POST', '/admin/accounts', body);
    notice('Account ' + b.email + ' created.');
    ev.target.reset();
    await loadAccounts();
  }));

  async function loadAdminKeys() {
    const list = (await api('GET', '/admin/keys')).data.data;
    keysTable($('admin-keys'), list, (k) => (k.status !== 'active' ? '' : h('span', null,
      h('button', { type: 'button', onclick: act(async () => {
        const r = await api('POST', '/admin/keys/' + encodeURIComponent(k.id) + '/rotate', {});
        showSecret($('admin-secret'), r.data.key, 'Key ' + k.prefix + ' rotated; the old secret works for its grace period.');
        await loadAdminKeys();
      }) }, 'Rotate'),
      h('button', { type: 'button', class: 'danger', onclick: act(async () => {
        await api('DELETE', '/admin/keys/' + encodeURIComponent(k.id));
        notice('Key ' + k.prefix + ' revoked.');
        await loadAdminKeys();
      }) }, 'Revoke'))), true);
  }

  $('admin-key-form').addEventListener('submit', act(async (ev) => {
    const b = formData(ev.target);
    const body = { name: b.name };
    if (b.account) body.account = b.account;
    if (b.tier) body.tier = b.tier;
    if (b.scopes) body.scopes = b.scopes.split(',').map((x) => x.trim()).filter(Boolean);
    const r = await api('POST', '/admin/keys', body);
    showSecret($('admin-secret'), r.data.key, 'Key ' + r.data.prefix + ' created.');
    ev.target.reset();
    await loadAdminKeys();
  }));

  async function loadAudit() {
    const list = (await api('GET', '/admin/audit?limit=50')).data.data;
    table($('audit'), [['ts', 'time'], ['event', 'event'], ['outcome', 'outcome'], ['actor', 'actor'],
      ['target', 'target'], ['address', 'address'], ['detail', 'detail']], list, 'id');
  }

  // --- wiring ----------------------------------------------------------------------------------

  $('login-account').addEventListener('submit', (ev) => {
    ev.preventDefault();
    const b = formData(ev.target);
    signIn({ email: b.email, password: b.password });
  });
  $('login-admin').addEventListener('submit', (ev) => {
    ev.preventDefault();
    signIn({ admin_token: formData(ev.target).admin_token });
    ev.target.reset();
  });
  $('signout').addEventListener('click', act(async () => {
    try { await api('POST', '/ui/api/logout'); } finally { signedOut('Signed out.'); }
  }));

  start();
})();
