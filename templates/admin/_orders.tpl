<table class="rows">
  <thead><tr><th>#</th><th>Created (UTC)</th><th>Shopper</th><th class="num">Items</th><th class="num">Total</th><th>Paid with</th><th>Status</th></tr></thead>
  <tbody>
  % for o in orders:
  <tr><td class="key"><a href="/admin/orders/{{o['id']}}">#{{o["id"]}}</a></td><td data-label="Created (UTC)">{{o["created_at"][:16].replace("T", " ")}}</td>
    <td data-label="Shopper"><a href="/admin/users/{{o['user_id']}}">{{o["first_name"] or o["user_id"]}}</a>{{(" @" + o["username"]) if o["username"] else ""}}</td>
    <td data-label="Items" class="num">{{o["items"]}}</td><td data-label="Total" class="num">{{fmt(o["total_cents"])}}
      % if o["discount_cents"]:
      <span class="sub promo" title="Discount code {{o['promo_code'] or ''}}">🏷 {{o["promo_code"] or ""}} −{{fmt(o["discount_cents"])}}</span>
      % end
    </td><td data-label="Paid with">{{method_words.get(o["payment_method"], o["payment_method"])}}</td><td data-label="Status" class="aside"><span class="status {{o['status']}}">{{o["status"]}}</span></td></tr>
  % end
  % if not orders:
  <tr><td colspan="7" class="muted">No orders match.</td></tr>
  % end
  </tbody>
</table>
% if more:
<p><a class="button secondary" href="{{more}}" hx-get="{{more}}" hx-target="#orders" hx-push-url="true">Older orders →</a></p>
% end
