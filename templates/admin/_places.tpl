% editing = get("editing")
<section class="card places-card" id="places" aria-labelledby="places-title">
  <div class="card-head">
    <h2 id="places-title">Places</h2>
    <span class="muted">{{len(cities)}} cit{{"ies" if len(cities) != 1 else "y"}}, {{len(districts)}} district{{"s" if len(districts) != 1 else ""}}</span>
  </div>
  % if get("alert"):
  <p class="flash bad" role="alert">⚠️ {{alert}}</p>
  % end
  % if cities:
  <p class="muted hint" id="reorder-help">Shoppers see the places in this order. Drag ⠿ to move one, or focus it and press ↑ or ↓.</p>
  <form id="places-order" method="post" action="/admin/places/order" hx-post="/admin/places/order" hx-trigger="reorder" hx-target="#places-status" hx-swap="innerHTML" hx-sync="this:queue last">
    % include('admin/_csrf.tpl')
  </form>
  <ol class="sortable cities" data-sortable="places-order" aria-label="Cities">
    % for city in places:
    <li class="place city" id="{{city['key']}}" data-sort-item>
      <input type="hidden" name="city" value="{{city['place']['id']}}" form="places-order">
      % include('admin/_place.tpl', editing=editing and editing["key"] == city["key"], focus=get("focus") == city["key"], **city)
      % if city["districts"]:
      <ol class="sortable districts" data-sortable="places-order" aria-label="Districts of {{city['place']['name']}}">
        % for d in city["districts"]:
        <li class="place district" id="{{d['key']}}" data-sort-item>
          <input type="hidden" name="district" value="{{d['place']['id']}}" form="places-order">
          % include('admin/_place.tpl', editing=editing and editing["key"] == d["key"], focus=get("focus") == d["key"], **d)
        </li>
        % end
      </ol>
      % end
    </li>
    % end
  </ol>
  % else:
  <p class="muted">No places yet: add a city, then its districts.</p>
  % end
  <p id="places-status" class="status-line" role="status">{{get("status") or ""}}</p>
  % adding = get("adding") or {}
  <details class="adder" id="add-place"{{!' open' if not cities or adding else ''}}>
    <summary>Add a city or a district</summary>
    % if get("add_error"):
    <p class="flash bad" role="alert">⚠️ {{add_error}}</p>
    % end
    <form method="post" action="/admin/cities" hx-post="/admin/cities" hx-target="#places" hx-swap="outerHTML" class="inline">
      % include('admin/_csrf.tpl')
      <label>New city <input name="name" required maxlength="64" value="{{adding.get('name', '') if adding.get('what') == 'city' else ''}}"{{!' autofocus' if adding.get('what') == 'city' else ''}}></label>
      <button type="submit">Add city</button>
    </form>
    % if cities:
    <form method="post" action="/admin/districts" hx-post="/admin/districts" hx-target="#places" hx-swap="outerHTML" class="inline">
      % include('admin/_csrf.tpl')
      <label>New district in <select name="city_id">
        % for c in cities:
        <option value="{{c['id']}}"{{!' selected' if str(c['id']) == adding.get('city_id') else ''}}>{{c["name"]}}</option>
        % end
      </select></label>
      <label>named <input name="name" required maxlength="64" value="{{adding.get('name', '') if adding.get('what') == 'district' else ''}}"{{!' autofocus' if adding.get('what') == 'district' else ''}}></label>
      <button type="submit">Add district</button>
    </form>
    % end
  </details>
</section>
