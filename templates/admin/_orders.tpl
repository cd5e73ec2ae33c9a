<table>
  <thead><tr><th>#</th><th>Created (UTC)</th><th>Shopper</th><th class="num">Items</th><th class="num">Total</th><th>Paid with</th><th>Status</th></tr></thead>
  <tbody>
  % for o in orders:
  <tr><td><a href="/admin/orders/{{o['id']}}">#{{o["id"]}}</a></td><td>{{o["created_at"][:16].replace("T", " ")}}</td>
    <td><a href="/admin/users/{{o['user_id']}}">{{o["first_name"] or o["user_id"]}}</a>{{(" @" + o["username"]) if o["username"] else ""}}</td>
    <td class="num">{{o["items"]}}</td><td class="num">{{fmt(o["total_cents"])}}</td><td>{{o["payment_method"]}}</td><td><span class="status {{o['status']}}">{{o["status"]}}</span></td></tr>
  % end
  % if not orders:
  <tr><td colspan="7" class="muted">No orders match.</td></tr>
  % end
  </tbody>
</table>
% if more:
<p><a class="button secondary" href="{{more}}" hx-get="{{more}}" hx-target="#orders" hx-push-url="true">Older orders →</a></p>
% end
