<table class="rows">
  <thead><tr><th>Payment</th><th>Created (UTC)</th><th>For</th><th class="num">Price</th><th>Paid with</th><th>Amount</th><th>Status</th><th>Outcome</th></tr></thead>
  <tbody>
  % for p in payments:
  % in_stars = p["pay_currency"] == "xtr"
  <tr><td class="key" data-label="Payment"><a href="/admin/payments/{{p['id']}}">{{p["provider_id"]}}</a>{{" (repeat deposit)" if p["parent_id"] else ""}}</td><td data-label="Created (UTC)">{{p["created_at"][:16].replace("T", " ")}}</td>
    <td data-label="For">{{("order #%d" % p["order_id"]) if p["order_id"] else "top-up"}}</td><td data-label="Price" class="num">{{fmt(p["price_cents"])}}</td>
    <td data-label="Paid with">{{method_words["stars"] if in_stars else "crypto · " + coin_labels.get(p["pay_currency"], p["pay_currency"].upper())}}</td>
    % if in_stars:
    <td data-label="Amount" class="wide">{{stars(p["pay_amount"])}}
      % if p["charge_id"]:
      <span class="sub">charge id <code class="charge">{{p["charge_id"]}}</code></span>
      % end
    </td>
    % else:
    <td data-label="Amount" class="wide">{{p["actually_paid"] or "0"}} / {{p["pay_amount"]}} {{p["pay_currency"].upper()}}</td>
    % end
    <td data-label="Status" class="aside"><span class="status {{p['status']}}">{{p["status"]}}</span></td><td data-label="Outcome">{{p["outcome"] or ""}}</td></tr>
  % end
  % if not payments:
  <tr><td colspan="8" class="muted">No payments.</td></tr>
  % end
  </tbody>
</table>
