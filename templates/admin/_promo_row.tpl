% t = p["terms"]
<tr id="promo-{{p['id']}}" class="promo{{'' if p['is_active'] else ' hidden'}}">
  <td class="key"><a href="/admin/promos/{{p['id']}}"><code class="promo-code">{{p["code"]}}</code></a>
    % if p["note"]:
    <span class="sub">{{p["note"]}}</span>
    % end
  </td>
  <td data-label="Off" class="num off">{{t["value"]}}</td>
  <td data-label="Minimum basket">{{fmt(p["min_total_cents"]) if p["min_total_cents"] else "none"}}</td>
  <td data-label="Dates (UTC)">{{t["period"].removesuffix(" UTC")}}</td>
  <td data-label="For" class="wide">{{t["products"]}} · {{t["cities"]}}</td>
  <td data-label="Limits"><span class="lines">{{("%d in all" % p["max_uses"]) if p["max_uses"] else "no limit in all"}}</span> <span class="lines">{{("%d per shopper" % p["max_uses_per_user"]) if p["max_uses_per_user"] else "no limit per shopper"}}</span></td>
  <td data-label="Uses" class="num uses"><span class="lines">{{p["uses_paid"]}} paid</span> <span class="lines">{{p["uses_reserved"]}} reserved</span> <span class="lines">{{"no limit" if p["uses_left"] is None else "%d left" % p["uses_left"]}}</span></td>
  <td data-label="Status" class="aside"><span class="state {{'on' if p['state'] == 'active' else 'off'}}">{{p["state"]}}</span></td>
  <td class="actions">
    <form method="post" action="/admin/promos/{{p['id']}}/{{'pause' if p['is_active'] else 'resume'}}" hx-post="/admin/promos/{{p['id']}}/{{'pause' if p['is_active'] else 'resume'}}" hx-target="closest tr" hx-swap="outerHTML">
      % include('admin/_csrf.tpl')
      <button type="submit" class="small secondary">{{"Pause" if p["is_active"] else "Resume"}}<span class="visually-hidden"> {{p["code"]}}</span></button>
    </form>
  </td>
</tr>
