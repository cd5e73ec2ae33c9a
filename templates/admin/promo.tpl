% rebase('admin/base.tpl', title='Code ' + p['code'], section='/admin/promos')
% t = p["terms"]
<p><a href="/admin/promos">← Promotions</a></p>
<div class="page-head">
  <h1>Code <code class="promo-code">{{p["code"]}}</code> <span class="state {{'on' if p['state'] == 'active' else 'off'}}">{{p["state"]}}</span></h1>
  <form method="post" action="/admin/promos/{{p['id']}}/{{'pause' if p['is_active'] else 'resume'}}" class="toolbar">
    % include('admin/_csrf.tpl')
    <button type="submit" class="{{'secondary' if p['is_active'] else ''}}">{{"Pause the code" if p["is_active"] else "Resume the code"}}</button>
  </form>
</div>
<p class="facts">{{t["value"]}} · {{t["minimum"]}} · {{t["period"]}} · {{t["products"]}} · {{t["cities"]}} · {{t["limits"]}}{{" · paused: shoppers cannot use it until you resume it; open invoices keep their price" if not p["is_active"] else ""}}</p>
<section class="cards">
  <div class="card stat"><h2>Paid orders</h2><p class="big">{{p["uses_paid"]}}</p><p>{{fmt(p["discount_paid_cents"])}} taken off</p></div>
  <div class="card stat"><h2>Reserved</h2><p class="big">{{p["uses_reserved"]}}</p><p>by open invoices</p></div>
  <div class="card stat"><h2>Left</h2><p class="big">{{"no limit" if p["uses_left"] is None else p["uses_left"]}}</p><p>{{("of %d" % p["max_uses"]) if p["max_uses"] else "in all"}}</p></div>
</section>
<section class="card">
  <h2>Change the code</h2>
  <p class="muted">Orders keep the discount they were given. Once a code has been used, its text stays (its orders show it); everything else may change.</p>
  <form method="post" action="/admin/promos/{{p['id']}}" class="form">
    % include('admin/_promo_form.tpl')
    <button type="submit">Save</button>
  </form>
</section>
<section class="card">
  <h2>Latest orders with the code</h2>
  % if orders:
  % include('admin/_orders.tpl')
  % else:
  <p class="muted">None yet.</p>
  % end
</section>
